"""Training a bundle from a manifest (``python -m model.training``); the stages are in ``model.training.cli``."""
