"""The web page: `fmnist.serve`'s Gradio app (app.py) over a catalogue of embedded, clustered garments (catalog.py)."""
