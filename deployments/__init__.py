"""Ray Serve deployments: the model served behind one HTTP front door (JSON API and Gradio UI).

Thin wrappers around ``model/`` that add batching (``batcher``, ``replica``),
configuration, health checks, retries (``retries``), the HTTP contract (``http/``) and
the UI (``ui/``); ``driver`` composes them and ``app.build_app`` is what Serve imports.
"""
