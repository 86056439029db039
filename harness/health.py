"""Waiting for a served app's ``GET /healthz`` to answer 200."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx


def wait_healthy(url: str, timeout_s: float = 300.0, *, check: Callable[[], None] | None = None,
                 interval_s: float = 0.5, request_timeout_s: float = 5.0) -> float:
    """Poll ``{url}/healthz`` until it answers 200; returns the seconds that took.

    ``check`` runs before every poll and raises to give up early (e.g. ``RayHead.check_alive``:
    a dead cluster never becomes healthy, so waiting out the timeout only hides why).
    Raises ``TimeoutError`` after ``timeout_s``.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check is not None:
            check()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=request_timeout_s).status_code == 200:
                return time.monotonic() - start
        time.sleep(interval_s)
    raise TimeoutError(f"{url}/healthz not healthy within {timeout_s:.0f} s")
