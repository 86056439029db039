"""A Gradio event as one request: the id and the trace of the HTTP request that submitted it.

Gradio runs an event in its queue's worker task, not in the request that submitted it
(``POST /gradio_api/queue/join``), so the handler sees neither that request's trace
context nor Serve's request context (the id Serve stamps on its log lines and sends
with every handle call). Without this, an event's model calls started traces of their
own, under whatever request id the worker task happened to hold. The edge middleware
leaves both in the request's ``state``, which the event keeps: ``gr.Request`` wraps
the submitting request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid

from deployments import tracing


@contextlib.contextmanager
def event_scope(request, name: str):
    """Inside the block: Serve's request context carries the submitting request's id, and
    a span ``name`` continues its trace. Yields the request id."""
    from ray.serve import context as serve_context

    state = getattr(request, "state", None)
    request_id = getattr(state, "request_id", None) or f"ui-{uuid.uuid4().hex[:12]}"
    current = serve_context._get_serve_request_context()
    # A fresh internal id, so Serve tells this event's calls apart from the worker's last ones.
    token = serve_context._serve_request_context.set(
        dataclasses.replace(current, request_id=request_id, _internal_request_id=""))
    try:
        with tracing.continued(getattr(state, "trace_context", None), name, request_id):
            yield request_id
    finally:
        serve_context._serve_request_context.reset(token)
