"""Group commit in the etcd layer: what goes out together, what waits, what fails together."""

from __future__ import annotations

import asyncio

import pytest

from services.datastore.etcd import _Batcher


class Flusher:
    """Records batches; each flush waits on ``release`` so tests control what is in flight."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_next: Exception | None = None

    async def __call__(self, requests: list[str]) -> list[str]:
        self.batches.append(list(requests))
        await self.release.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return [f"done:{r}" for r in requests]


def key_of(request: str) -> set[str]:
    return {request.split("#")[0]}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_lone_request_goes_at_once_and_queued_ones_go_together() -> None:
    flush = Flusher()
    b: _Batcher[str, str] = _Batcher(flush, keys=key_of)
    first = asyncio.ensure_future(b.submit("a"))
    await settle()
    assert flush.batches == [["a"]]  # no timer: sent while nothing else was queued
    rest = [asyncio.ensure_future(b.submit(k)) for k in ("b", "c", "d")]
    await settle()
    assert flush.batches == [["a"]]  # waiting behind the batch in flight
    flush.release.set()
    assert await first == "done:a"
    assert await asyncio.gather(*rest) == ["done:b", "done:c", "done:d"]
    assert flush.batches == [["a"], ["b", "c", "d"]]
    assert (b.batches, b.requests) == (2, 4)


async def test_same_key_waits_for_a_later_batch_in_order() -> None:
    flush = Flusher()
    b: _Batcher[str, str] = _Batcher(flush, keys=key_of)
    blocker = asyncio.ensure_future(b.submit("x"))
    await settle()
    queued = [asyncio.ensure_future(b.submit(r)) for r in ("k#1", "m", "k#2", "n", "k#3")]
    await settle()
    flush.release.set()
    await asyncio.gather(blocker, *queued)
    assert flush.batches == [["x"], ["k#1", "m", "n"], ["k#2"], ["k#3"]]


async def test_batch_limits() -> None:
    flush = Flusher()
    flush.release.set()
    b: _Batcher[str, str] = _Batcher(flush, keys=key_of, size=len, max_batch=2, max_bytes=5)
    await asyncio.gather(*(b.submit(r) for r in ("a", "b", "c", "dddd", "e")))
    assert all(len(batch) <= 2 and sum(map(len, batch)) <= 5 for batch in flush.batches)
    assert sorted(r for batch in flush.batches for r in batch) == ["a", "b", "c", "dddd", "e"]


async def test_a_failed_flush_fails_its_batch_only() -> None:
    flush = Flusher()
    b: _Batcher[str, str] = _Batcher(flush, keys=key_of)
    blocker = asyncio.ensure_future(b.submit("a"))
    await settle()
    flush.fail_next = RuntimeError("etcd went away")
    flush.release.set()
    with pytest.raises(RuntimeError):
        await blocker
    assert await b.submit("b") == "done:b"


async def test_a_caller_that_gave_up_is_not_sent() -> None:
    flush = Flusher()
    b: _Batcher[str, str] = _Batcher(flush, keys=key_of)
    blocker = asyncio.ensure_future(b.submit("a"))
    await settle()
    gone = asyncio.ensure_future(b.submit("b"))
    kept = asyncio.ensure_future(b.submit("c"))
    await settle()
    gone.cancel()
    flush.release.set()
    await asyncio.gather(blocker, kept)
    assert flush.batches == [["a"], ["c"]]
