"""The Gradio UI served beside the JSON API; ``mount_ui(app, driver)`` puts it at ``/``."""

from deployments.ui.page import mount_ui

__all__ = ["mount_ui"]
