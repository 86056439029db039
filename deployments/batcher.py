"""The replica batcher: forms a batch when the model is free, not when a timer fires.

Why not Ray's ``@serve.batch``: it forms the next batch while the current one is
still computing. It takes the first waiting request, waits ``batch_wait_timeout_s``
for company and then queues that batch behind the running one, so requests that
arrive during the rest of the forward pass wait for the batch after. Under load its
batches stay small, and at low load every request pays the full wait.

``batched`` keeps one worker per replica method that takes the next batch only
when the previous one has finished: everything that queued meanwhile goes in
together (up to ``max_batch_size``). The wait for company counts from the oldest
waiting request's arrival, so a backlog never waits and a lone request waits at
most ``batch_wait_timeout_s`` (0 means: never wait; batches still form from what
queued during the previous forward pass).

The decorated method is called with one list per argument, must return one result
per item, and keeps a replica's event loop free by running its forward pass in a
thread. Requests whose caller went away (a client that disconnected cancels its
request) are dropped before their batch runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from deployments import metrics, tracing


@dataclass
class _Pending:
    arrived: float
    args: tuple
    future: asyncio.Future = field(repr=False)
    trace: tuple | None = field(default=None, repr=False)  # tracing.capture(): None when tracing is off


class Batcher:
    """One method's queue and worker inside one replica."""

    def __init__(self, run_batch: Callable[..., Awaitable[list]], max_batch_size: int, batch_wait_timeout_s: float):
        self.run_batch = run_batch
        self.configure(max_batch_size, batch_wait_timeout_s)
        self.queue: asyncio.Queue[_Pending] | None = None
        self.worker: asyncio.Task | None = None

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        if max_batch_size < 1 or batch_wait_timeout_s < 0:
            raise ValueError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s

    async def submit(self, args: tuple) -> Any:
        loop = asyncio.get_running_loop()
        if self.worker is None or self.worker.done():
            self.queue = self.queue or asyncio.Queue()
            # A context of its own: the worker outlives the request that started it, and
            # must not carry that request's Serve context or trace into every later batch.
            self.worker = contextvars.Context().run(loop.create_task, self._work())
        pending = _Pending(time.monotonic(), args, loop.create_future(), tracing.capture())
        self.queue.put_nowait(pending)
        return await pending.future

    async def _next_batch(self) -> list[_Pending]:
        batch = [await self.queue.get()]
        while len(batch) < self.max_batch_size:
            while len(batch) < self.max_batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            # A request whose caller went away keeps no place and sets no deadline: the
            # wait counts from the oldest request still waiting (with the current setting).
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                return []
            remaining = batch[0].arrived + self.batch_wait_timeout_s - time.monotonic()
            if len(batch) >= self.max_batch_size or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [p for p in batch if not p.future.done()]  # done = cancelled by its caller

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            began = time.monotonic()
            try:
                columns = [list(column) for column in zip(*(p.args for p in batch))]
                with tracing.batch_spans([p.trace for p in batch]):
                    results = await self.run_batch(*columns)
                metrics.observe_batch([began - p.arrived for p in batch], time.monotonic() - began)
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch handler returned {len(results)} results for {len(batch)} inputs")
            except Exception as exc:  # every caller in the batch gets the error; the worker goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, result in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(result)


def batched(max_batch_size: int = 8, batch_wait_timeout_s: float = 0.0):
    """Decorate an async replica method ``f(self, list_a, list_b, ...) -> list``; callers
    call it with single items, ``await self.f(a, b)``, and get their own result."""

    def decorate(method: Callable[..., Awaitable[list]]):
        slot = f"_batcher_{method.__name__}"

        def batcher_of(instance) -> Batcher:
            """The instance's own batcher (``reconfigure`` changes its settings)."""
            if slot not in instance.__dict__:
                instance.__dict__[slot] = Batcher(functools.partial(method, instance), max_batch_size,
                                                  batch_wait_timeout_s)
            return instance.__dict__[slot]

        @functools.wraps(method)
        async def call(self, *args):
            return await batcher_of(self).submit(args)

        call.batcher_of = batcher_of
        return call

    return decorate
