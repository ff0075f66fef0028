"""Watch stream pieces without etcd: what one stream watches, and raw events → WatchEvents."""

from __future__ import annotations

import asyncio

import pytest

from libcalico.errors import ValidationError
from services.datastore.etcd import KV, RawEvent
from services.datastore.store import RevisionTraces, Store
from services.datastore.watch import EventType, Watcher, make_filter

RES = "/calico/resources/v3/projectcalico.org/"


@pytest.mark.parametrize(
    ("kinds", "prefixes", "kv_only", "expected"),
    [
        (["IPPool"], [], False, RES + "ippools/"),
        (["ippool", "IPPool"], [], False, RES + "ippools/"),
        (["IPPool", "Node"], [], False, RES),
        ([], [], False, RES),
        ([], ["/calico/ipam/v2/"], True, "/calico/ipam/v2/"),
        (
            [],
            ["/calico/ipam/v2/assignment/", "/calico/ipam/v2/host/"],
            True,
            "/calico/ipam/v2/",
        ),
        (["IPPool"], ["/calico/ipam/v2/"], False, "/calico/"),
    ],
)
def test_one_etcd_watch_covers_the_common_prefix(
    kinds: list[str], prefixes: list[str], kv_only: bool, expected: str
) -> None:
    assert make_filter(kinds, prefixes, kv_only=kv_only).etcd_prefix == expected


def test_filter_matches_kinds_and_prefixes() -> None:
    flt = make_filter(["IPPool"], ["/calico/ipam/v2/handle/"])
    assert flt.resource(RES + "ippools/a") == ("IPPool", None, "a")
    assert flt.resource(RES + "nodes/a") is None
    assert flt.wants_kv("/calico/ipam/v2/handle/h")
    assert not flt.wants_kv("/calico/ipam/v2/host/n")


@pytest.mark.parametrize(
    ("kinds", "prefixes", "kv_only"),
    [([], [], True), (["NoSuchKind"], [], False), ([], ["/calico/resources/v3/"], False)],
)
def test_bad_watch_requests(kinds: list[str], prefixes: list[str], kv_only: bool) -> None:
    with pytest.raises(ValidationError):
        make_filter(kinds, prefixes, kv_only=kv_only)


def _watcher() -> tuple[Watcher, RevisionTraces]:
    traces = RevisionTraces()
    store = Store(object(), traces=traces, traceparent=lambda: "")  # type: ignore[arg-type]
    return Watcher(store), traces


async def test_event_types_and_deleted_carries_last_value() -> None:
    watcher, traces = _watcher()
    key = RES + "networkpolicies/ns1/p"
    traces.record(7, key, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    flt = make_filter(["NetworkPolicy"], ["/calico/ipam/v2/"])
    added = await watcher._event(flt, RawEvent(False, KV(key, b"{}", 5, 5), None))
    modified = await watcher._event(flt, RawEvent(False, KV(key, b'{"a":1}', 6, 5), None))
    deleted = await watcher._event(
        flt, RawEvent(True, KV(key, b"", 7, 0), KV(key, b'{"a":1}', 6, 5))
    )
    assert added is not None and modified is not None and deleted is not None
    assert [added.type, modified.type, deleted.type] == [
        EventType.ADDED, EventType.MODIFIED, EventType.DELETED
    ]
    assert deleted.revision == 7
    assert deleted.resource is not None
    assert (deleted.resource.namespace, deleted.resource.name) == ("ns1", "p")
    assert deleted.resource.raw == b'{"a":1}' and deleted.resource.revision == 6
    assert deleted.traceparent.startswith("00-0af7651916cd43dd")
    kv_del = await watcher._event(
        flt,
        RawEvent(True, KV("/calico/ipam/v2/x", b"", 9, 0), KV("/calico/ipam/v2/x", b"1", 8, 8)),
    )
    assert kv_del is not None and kv_del.kv is not None and kv_del.kv.value == b"1"
    for unwanted in (RES + "ippools/a", "/calico/felix/x"):
        assert await watcher._event(flt, RawEvent(False, KV(unwanted, b"{}", 3, 3), None)) is None


def test_revision_traces_ignore_empty_and_keep_the_newest() -> None:
    traces = RevisionTraces(capacity=3)
    traces.record(1, "/k", "")
    for rev in range(2, 8):
        traces.record(rev, "/k", f"tp{rev}")
    traces.record(7, "/other", "tp7-other")  # one revision, two writers
    assert len(traces) == 3
    assert traces.get(1, "/k") == "" and traces.get(4, "/k") == ""
    assert traces.get(7, "/k") == "tp7" and traces.get(7, "/other") == "tp7-other"


async def test_settle_waits_for_this_process_writes_in_flight() -> None:
    traces = RevisionTraces()
    ticket = traces.begin()
    waiter = asyncio.get_running_loop().create_task(traces.settle(5, "/k"))
    await asyncio.sleep(0)
    assert not waiter.done()  # the event came before the writer saw its revision
    traces.end(ticket, 5, ["/k"], "tp5")
    assert await asyncio.wait_for(waiter, 1) == "tp5"
    assert await asyncio.wait_for(traces.settle(6, "/k"), 1) == ""  # nothing in flight


async def test_settle_is_bounded() -> None:
    traces = RevisionTraces(settle_timeout=0.05)
    traces.begin()  # a write that never finishes
    assert await asyncio.wait_for(traces.settle(5, "/k"), 1) == ""
