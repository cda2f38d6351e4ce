"""Reading results: a model's reports, run discovery and aggregation, comparison, clustering, the results table."""
