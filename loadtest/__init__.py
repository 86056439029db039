"""Soak test: Locust against the real app on a private local Ray (``python -m loadtest.run``)."""
