"""Saga search: parameters checked at the edge, filters on stored rows, keyset pages."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agents.orchestrator.saga import CANCELLED, CONFIRMED, RUNNING, Saga
from agents.orchestrator.search import PAGE_LIMIT_MAX, BadQuery, Query, merge_pages

NOW = 1_700_000_000_000


def row(status: str = RUNNING, seen: int = NOW - 1_000, **changes: Any) -> dict[str, Any]:
    saga = Saga(str(uuid.uuid4()), status, seen, seen + 30_000, seen, started_at_ms=seen)
    data = saga.as_dict()
    data.update(changes)
    return data


def test_filters_by_status_reason_customer_time_and_stuck() -> None:
    stuck = row(seen=NOW - 60_000, customer_id="alice")
    young = row(seen=NOW - 1_000, customer_id="alice")
    out_of_stock = row(CANCELLED, reason="out of stock: SKU-1", customer_id="bob")
    confirmed = row(CONFIRMED, seen=NOW - 120_000, customer_id="bob")
    rows = [stuck, young, out_of_stock, confirmed]

    def ids(**params: str) -> set[str]:
        page, _ = Query.parse(params).page(rows, NOW)
        return {r["order_id"] for r in page}

    assert ids() == {r["order_id"] for r in rows}
    assert ids(status="running") == {stuck["order_id"], young["order_id"]}
    assert ids(status="CONFIRMED,CANCELLED") == {out_of_stock["order_id"], confirmed["order_id"]}
    assert ids(reason="Out Of Stock") == {out_of_stock["order_id"]}
    assert ids(customer="alice") == {stuck["order_id"], young["order_id"]}
    assert ids(stuck="true") == {stuck["order_id"]}
    assert ids(since=str(NOW - 70_000), until=str(NOW - 30_000)) == {stuck["order_id"]}
    assert ids(order_id=young["order_id"][:8].upper()) == {young["order_id"]}


def test_times_are_iso_8601_or_epoch_milliseconds() -> None:
    iso = Query.parse({"since": "2023-11-14T22:13:20Z", "until": "2023-11-14T22:13:21"})
    assert (iso.since_ms, iso.until_ms) == (NOW, NOW + 1_000)  # no zone: UTC
    assert Query.parse({"since": str(NOW)}).since_ms == NOW


@pytest.mark.parametrize(("params", "field"), [
    ({"status": "LOST"}, "status"), ({"since": "yesterday"}, "since"),
    ({"since": "2024-01-02", "until": "2024-01-01"}, "until"), ({"stuck": "maybe"}, "stuck"),
    ({"sort": "random"}, "sort"), ({"limit": "0"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"cursor": "!!!"}, "cursor"), ({"custmer": "alice"}, "custmer"),
])
def test_a_bad_parameter_is_refused_by_name(params: dict[str, str], field: str) -> None:
    with pytest.raises(BadQuery, match=f"^{field}: "):
        Query.parse(params)


def test_the_page_size_is_bounded() -> None:
    assert Query.parse({}).limit == 50
    assert Query.parse({"limit": "100000"}).limit == PAGE_LIMIT_MAX


def test_cursor_pages_walk_every_saga_once_in_order() -> None:
    rows = [row(seen=NOW - i * 10) for i in range(23)]
    rows.append(row(seen=NOW - 50))  # a tie on the time: the order id decides
    for sort in ("newest", "oldest", "updated"):
        query, seen, cursor = Query.parse({"limit": "5", "sort": sort}), [], ""
        while True:
            page_query = Query.parse({"limit": "5", "sort": sort, "cursor": cursor})
            page, more = page_query.page(rows, NOW)
            seen += [r["order_id"] for r in page]
            if not more:
                break
            cursor = page_query.cursor_of(page[-1])
        assert seen == [r["order_id"] for r in sorted(rows, key=query.key)], sort
        assert len(set(seen)) == len(rows)


def test_a_cursor_is_for_one_sort_only() -> None:
    query = Query.parse({"sort": "oldest"})
    cursor = query.cursor_of(row())
    assert Query.parse({"sort": "oldest", "cursor": cursor}).after is not None
    with pytest.raises(BadQuery, match="^cursor: made for sort='oldest'"):
        Query.parse({"sort": "newest", "cursor": cursor})


def test_pages_of_two_workers_merge_into_the_clusters_page() -> None:
    mine = [row(seen=NOW - i * 20) for i in range(6)]
    theirs = [row(seen=NOW - i * 20 - 10) for i in range(6)]
    query = Query.parse({"limit": "4"})
    pages = [(list(query.page(rows, NOW)[0]), query.page(rows, NOW)[1]) for rows in (mine, theirs)]
    shown, cursor = merge_pages(query, pages)  # type: ignore[arg-type]
    everything = sorted(mine + theirs, key=query.key)
    assert [s["order_id"] for s in shown] == [r["order_id"] for r in everything[:4]]
    assert cursor is not None
    rest = Query.parse({"limit": "500", "cursor": cursor}).page(mine + theirs, NOW)[0]
    assert [r["order_id"] for r in rest] == [r["order_id"] for r in everything[4:]]


def test_a_saga_two_workers_answered_with_is_shown_once_newest_copy() -> None:
    old = row()
    new = {**old, "status": CONFIRMED, "updated_at_ms": old["updated_at_ms"] + 5}
    shown, cursor = merge_pages(Query(), [([old], False), ([new], False)])
    assert shown == [new] and cursor is None


def test_query_params_round_trip_for_the_peers() -> None:
    params = {"status": "CANCELLED,RUNNING", "reason": "stock", "customer": "c",
              "order_id": "ab", "since": "1", "until": "2", "stuck": "true", "sort": "oldest",
              "limit": "7"}
    query = Query.parse(params)
    assert query.params() == params and Query.parse(query.params()) == query
