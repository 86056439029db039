"""The replica batcher (deployments.batcher), on a plain asyncio loop: no Ray needed."""

import asyncio
import time

import pytest

from deployments.batcher import batched


class SlowModel:
    """Records each batch; a forward pass takes ``seconds`` in a thread, like a replica's."""

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.batches: list[list] = []

    @batched(max_batch_size=8)
    async def double(self, xs: list[int]) -> list[int]:
        self.batches.append(list(xs))
        await asyncio.to_thread(time.sleep, self.seconds)
        if any(x < 0 for x in xs):
            raise ValueError("negative input")
        return [2 * x for x in xs]


def test_requests_that_queue_during_a_forward_pass_form_the_next_batch():
    async def main():
        model = SlowModel()
        first = asyncio.create_task(model.double(0))
        await asyncio.sleep(0.01)  # the first batch (of one) is computing now
        rest = await asyncio.gather(*(model.double(i) for i in range(1, 8)))
        return model, await first, rest

    model, first, rest = asyncio.run(main())
    assert first == 0 and rest == [2 * i for i in range(1, 8)]
    assert model.batches == [[0], list(range(1, 8))]


def test_a_lone_request_does_not_wait_and_max_batch_size_is_respected():
    async def main():
        model = SlowModel(seconds=0.0)
        started = time.perf_counter()
        assert await model.double(21) == 42
        alone = time.perf_counter() - started
        SlowModel.double.batcher_of(model).configure(max_batch_size=3, batch_wait_timeout_s=0.2)
        results = await asyncio.gather(*(model.double(i) for i in range(7)))
        return model, alone, results

    model, alone, results = asyncio.run(main())
    assert alone < 0.1
    assert results == [2 * i for i in range(7)]
    assert [len(b) for b in model.batches[1:]] == [3, 3, 1]


def test_an_error_reaches_every_caller_in_its_batch_and_the_worker_goes_on():
    async def main():
        model = SlowModel(seconds=0.01)
        blocker = asyncio.create_task(model.double(1))
        await asyncio.sleep(0.002)
        bad = await asyncio.gather(model.double(-1), model.double(5), return_exceptions=True)
        await blocker
        return bad, await model.double(4)

    bad, after = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in bad)
    assert after == 8


def test_a_cancelled_request_is_dropped_before_its_batch_runs():
    async def main():
        model = SlowModel(seconds=0.05)
        blocker = asyncio.create_task(model.double(1))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(model.double(100))
        kept = asyncio.create_task(model.double(3))
        await asyncio.sleep(0.005)
        gone.cancel()  # e.g. its HTTP client disconnected
        await blocker
        return model, await kept

    model, kept = asyncio.run(main())
    assert kept == 6 and model.batches == [[1], [3]]


def test_a_handler_that_loses_items_is_an_error():
    class Lossy:
        @batched(max_batch_size=4)
        async def f(self, xs):
            return xs[:1]

    async def main():
        model = Lossy()
        return await asyncio.gather(model.f(1), model.f(2), return_exceptions=True)

    results = asyncio.run(main())
    # Both calls are queued before the worker first runs, so they share one batch.
    assert all(isinstance(r, RuntimeError) and "1 results for 2 inputs" in str(r) for r in results)
    with pytest.raises(ValueError):
        SlowModel.double.batcher_of(SlowModel()).configure(max_batch_size=0, batch_wait_timeout_s=0)


def test_a_cancelled_request_sets_no_deadline_for_the_others():
    """The wait for company counts from the oldest request still waiting: one whose caller
    left (cancelled) neither runs nor closes the window early for those behind it."""

    async def main():
        model = SlowModel(seconds=0.0)
        SlowModel.double.batcher_of(model).configure(8, 0.5)
        gone = asyncio.create_task(model.double(1))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.25)
        started = time.perf_counter()
        result = await model.double(2)
        return model, result, time.perf_counter() - started

    model, result, waited = asyncio.run(main())
    assert result == 4 and model.batches == [[2]]
    # Its own 0.5 s, not what was left of the cancelled one's (0.2 s).
    assert waited >= 0.45, waited
