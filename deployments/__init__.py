"""Ray Serve deployments: thin wrappers around ``model/`` that add batching,
configuration, health checks and the HTTP/Gradio front door."""
