"""Which model-call failures are worth retrying, and the driver's retry loop around them."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments import metrics
from deployments.http.errors import ModelUnhealthy, Overloaded, Unavailable

logger = logging.getLogger("ray.serve")

T = TypeVar("T")

# A replica that died or is unreachable. Encoders and fusion are pure functions of
# their input, so a request that hit one is safe to send again. ActorDiedError and
# ActorUnavailableError are RayActorError subclasses. A killed replica reaches the
# driver as ActorDiedError itself or, for the audio features passed on to FusionHead,
# as RayTaskError(ActorDiedError); Serve's router may also report a dead producer of
# an argument as a RayServeException whose __cause__ is the ActorDiedError.
# ``failure_in`` looks through all three (tests/test_reliability.py kills replicas
# under load). Serve's router resends many such requests on its own before the
# driver sees them.
RETRYABLE = (RayActorError,)


def failure_in(exc: BaseException, kinds: tuple) -> Optional[BaseException]:
    """The first exception of ``kinds`` in ``exc``'s cause chain (see RETRYABLE)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def check_output(result: dict) -> None:
    """A model that has gone bad (NaN weights) answers NaN: refuse to serve it.

    Retryable (another replica may be healthy); the replica's health check fails
    on the same fault and Serve replaces it.
    """
    numbers = [result["sentiment"], *result["scores"].values()]
    for branch in result.get("modalities", {}).values():
        numbers += [branch["sentiment"], *branch["scores"].values()]
    if not all(math.isfinite(x) for x in numbers):
        raise ModelUnhealthy("the model produced an invalid (non-finite) output; retry shortly")


@dataclass
class RetryLog:
    """What the retry loop saw, for the caller that times it out: a request that lost its
    replica and then ran out of time gets a 503 with Retry-After, not a 504."""

    replica_failures: int = 0


async def with_retries(attempt: Callable[[], Awaitable[T]], retries: int, request_id: str,
                       log: RetryLog | None = None) -> T:
    """``attempt()``, again up to ``retries`` times when a replica failed; every failure
    leaves as a ``ServiceError`` the HTTP layer maps (503 overloaded/unavailable), or as
    the original exception when it is not a replica's fault."""
    log = log if log is not None else RetryLog()
    for number in range(retries + 1):
        try:
            return await attempt()
        except Exception as exc:
            if failure_in(exc, (BackPressureError,)):
                raise Overloaded("the service is at capacity; retry shortly") from None
            if failure_in(exc, (DeploymentUnavailableError,)):
                raise Unavailable("a model deployment is unavailable; retry shortly") from None
            failure = failure_in(exc, RETRYABLE + (ModelUnhealthy,))
            if failure is None:
                raise
            log.replica_failures += 1
            logger.warning("request %s: %s (attempt %d of %d)", request_id, type(failure).__name__,
                           number + 1, retries + 1)
            if number == retries:
                if isinstance(failure, ModelUnhealthy):
                    raise failure from None
                raise Unavailable("a model replica failed; retry shortly") from None
            metrics.count_retry(failure)
            await asyncio.sleep(0.2 * (number + 1))
    raise AssertionError("unreachable")  # the loop returns or raises
