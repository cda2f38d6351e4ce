"""Hyperparameter search on Optuna: the search space from its config (space.py), the study and trials (search.py)."""
