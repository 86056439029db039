"""The model replicas' common base: threads, device, batch settings, health probe and stats."""

from __future__ import annotations

import collections
import logging
import math
import os

import ray
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

logger = logging.getLogger("ray.serve")

# ``ModelReplica.inject_fault`` works only in replicas whose environment sets this to
# "1" (tests pass it through ``ray_actor_options.runtime_env.env_vars``).
FAULT_INJECTION_ENV = "SENTIMENT_FAULT_INJECTION"


class BatchingConfig(BaseModel):
    """The ``user_config`` every model deployment accepts (changeable without a restart)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=512)
    # How long a lone request may wait for company (deployments.batcher): 0 never waits,
    # and batches still form under load from what queues during a forward pass.
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=5.0)


def assigned_cpus() -> float:
    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:  # not inside a Ray worker (unit tests)
        return float(os.cpu_count() or 1)


def configure_threads() -> int:
    """Match torch's intra-op threads to the CPUs Ray gave this replica.

    Without this every replica starts one thread per core of the machine and the
    replicas oversubscribe the cores. Fractional shares round up to one thread.
    """
    threads = max(1, math.floor(assigned_cpus() + 1e-6))
    torch.set_num_threads(threads)
    return threads


def replica_device() -> str:
    """CUDA when Ray assigned this replica (a fraction of) a GPU, the CPU otherwise."""
    try:
        has_gpu = bool(ray.get_gpu_ids())
    except Exception:
        has_gpu = False
    return "cuda" if has_gpu and torch.cuda.is_available() else "cpu"


class BatchStats:
    """Counts the batch sizes a replica actually formed, for tests and benchmarks."""

    def __init__(self, name: str):
        self.name = name
        self.sizes: collections.Counter[int] = collections.Counter()

    def record(self, size: int) -> None:
        self.sizes[size] += 1
        logger.debug("%s formed a batch of %d", self.name, size)

    def snapshot(self) -> dict:
        total = sum(self.sizes.values())
        items = sum(size * count for size, count in self.sizes.items())
        return {
            "batches": total,
            "items": items,
            "mean_batch_size": items / total if total else 0.0,
            "histogram": {str(k): v for k, v in sorted(self.sizes.items())},
            "pid": os.getpid(),
        }


class ModelReplica:
    """Base for the model deployments: batching knobs from ``user_config``, a health
    probe that runs a real forward pass, and batch statistics.

    Subclasses set ``batched_method`` to the name of their ``@batched`` method
    and implement ``probe()``, a tiny synchronous forward pass.
    """

    batched_method = ""

    def __init__(self, name: str):
        self.threads = configure_threads()
        self.device = replica_device()
        self.stats = BatchStats(name)
        self.probe_failures = 0
        logger.info("%s replica on %s with %d torch threads", name, self.device, self.threads)

    def reconfigure(self, user_config: dict | None) -> None:
        config = BatchingConfig(**(user_config or {}))
        method = getattr(type(self), self.batched_method)
        method.batcher_of(self).configure(config.max_batch_size, config.batch_wait_timeout_s)
        self.batching = config

    def probe(self) -> None:
        raise NotImplementedError

    async def check_health(self) -> None:
        # A forward pass on a tiny input: a model that has gone bad (NaNs, CUDA
        # errors) fails here, and Serve replaces the replica. It runs in a thread so
        # a slow probe never stalls the replica's event loop (and its requests).
        import asyncio

        try:
            await asyncio.to_thread(self.probe)
        except Exception:
            self.probe_failures += 1
            logger.error("health probe failed (%d so far); Serve will replace this replica",
                         self.probe_failures)
            raise

    def batch_stats(self) -> dict:
        # The batcher's own settings, not the user_config last received: they show that a
        # live reconfiguration reached the code that forms batches.
        batcher = getattr(type(self), self.batched_method).batcher_of(self)
        return self.stats.snapshot() | {"max_batch_size": batcher.max_batch_size,
                                        "batch_wait_timeout_s": batcher.batch_wait_timeout_s}

    def inject_fault(self, kind: str = "nan_weights") -> str:
        """Test-only: break this replica's model the way a bad GPU or a bad update would.

        Reachable only through a ``DeploymentHandle``: model deployments have no
        HTTP route and the driver never calls this. Refused unless the replica was
        started with ``SENTIMENT_FAULT_INJECTION=1``, so a production replica cannot
        be broken even by code that holds a handle. Returns the replica's id.
        """
        if os.environ.get(FAULT_INJECTION_ENV) != "1":
            raise PermissionError(f"fault injection is disabled; start the replica with {FAULT_INJECTION_ENV}=1")
        if kind != "nan_weights":
            raise ValueError(f"unknown fault {kind!r}")
        with torch.no_grad():
            for module in self._torch_modules():
                for param in module.parameters():
                    param.fill_(float("nan"))
        logger.warning("fault injected: %s", kind)
        return serve.get_replica_context().replica_tag

    def _torch_modules(self) -> list[torch.nn.Module]:
        """The torch modules this replica holds, directly or inside an encoder wrapper."""
        found = []
        for value in vars(self).values():
            module = value if isinstance(value, torch.nn.Module) else getattr(value, "model", None)
            if isinstance(module, torch.nn.Module):
                found.append(module)
        return found

    def ping(self) -> bool:
        return True
