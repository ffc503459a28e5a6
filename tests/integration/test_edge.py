"""The system's edge on a running stack: what the README promises to clients and operators.

One stack (its own broker, so the README's topic names hold) with an admin
token. Orders come in the ways the README shows: its Python example as
written, an envelope with only the required fields encoded by protoc, HTTP
and the CLI. Prices come from the catalogue; invalid Kafka input is
dead-lettered naming the field; dead letters are read in pages, with the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agents.dev.catalogue import price_of
from agents.dev.stack import Stack, settings_env
from agents.messaging.client import OrderClient
from agents.ops.audit import audit
from schemas.codec import new_envelope
from schemas.oms_pb2 import OrderLine, PlaceOrder
from tests.conftest import make_settings, running_stack
from tests.helpers import eventually, query

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "edge-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(tmp_path_factory.mktemp("edge"), admin_token=TOKEN)
    assert settings.topic_prefix == "oms."  # the README's topic names
    async with running_stack(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def terminal(stack: Stack, order_id: str) -> dict[str, Any]:
    """The order's row once it is CONFIRMED or CANCELLED."""
    async def probe() -> dict[str, Any] | None:
        rows = await query(stack.settings, "orders",
                           "SELECT status, reason, amount_cents, placed_at FROM orders"
                           " WHERE order_id = $1", order_id)
        return dict(rows[0]) if rows else None

    return await eventually(probe, lambda r: r is not None and r["status"] != "PENDING", 30,
                            f"order {order_id} terminal")


async def captured(stack: Stack, order_id: str) -> list[tuple[str, int]]:
    rows = await query(stack.settings, "payments", "SELECT status, amount_cents FROM psp_charges"
                       " WHERE idempotency_key = $1", order_id)
    return [(r["status"], r["amount_cents"]) for r in rows]


async def shown(http: aiohttp.ClientSession, stack: Stack, order_id: str) -> dict[str, Any]:
    async with http.get(f"{stack.web_url('orders-0')}/orders/{order_id}/") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


def placed_recently(iso: str) -> bool:
    return datetime.now(UTC) - datetime.fromisoformat(iso) < timedelta(minutes=5)


async def run(*argv: str, env: dict[str, str] | None = None, stdin: bytes | None = None
              ) -> tuple[int, bytes, str]:
    """Run a program from the repository root; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode or 0, out, err.decode()


# ---- placing orders the ways the README shows --------------------------------


def readme_kafka_example() -> str:
    """The Python block of the README's "Placing orders" Kafka paragraph, verbatim."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Placing orders"):text.index("**CLI.**")]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_kafka_example_places_an_order_as_written(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    code = readme_kafka_example()
    assert '"127.0.0.1:9092"' in code and '"oms.order-commands"' in code
    code = code.replace("127.0.0.1:9092", stack.settings.kafka_bootstrap or "")  # our broker
    status, out, err = await run(sys.executable, "-c", code)
    assert status == 0, err
    order_id = out.decode().strip()
    row = await terminal(stack, order_id)
    assert row["status"] == "CONFIRMED", row
    assert row["amount_cents"] == 2 * price_of("SKU-0001")
    assert await captured(stack, order_id) == [("CAPTURED", 2 * price_of("SKU-0001"))]
    order = await shown(http, stack, order_id)
    assert order["payment_token"] == "****" and placed_recently(order["placed_at"])


async def test_an_envelope_with_only_the_required_fields_places_an_order_now(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """What another language's producer sends: encoded by protoc from the README's fields.

    The bytes come from Google's protoc (``--encode``) and the .proto, not from
    our codec. (kcat would be the natural sender, but Debian's kcat 1.7.1,
    librdkafka 2.0.2, cannot parse Tansu 0.6.0's ApiVersions v3 answer and
    never connects; so the raw bytes go out through a plain producer.)
    """
    order_id = str(uuid.uuid4())
    text = (f'event_id: "{uuid.uuid4()}" order_id: "{order_id}" type: "PlaceOrder"'
            ' place_order { customer_id: "c-protoc" payment_token: "tok_visa"'
            ' lines { sku: "SKU-0003" quantity: 2 } }')
    status, value, err = await run(sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}",
                                   "--encode=oms.v1.Envelope", "schemas/oms.proto",
                                   stdin=text.encode())
    assert status == 0, err
    async with OrderClient(stack.settings) as client:
        await client.send_raw("oms.order-commands", order_id.encode(), value)
    row = await terminal(stack, order_id)
    assert row["status"] == "CONFIRMED", row
    assert row["amount_cents"] == 2 * price_of("SKU-0003")
    order = await shown(http, stack, order_id)
    assert placed_recently(order["placed_at"]), order  # not 1970-01-01
    assert order["currency"] == "EUR"


async def test_the_cli_places_an_order_without_a_price(stack: Stack) -> None:
    env = {**os.environ, **settings_env(stack.settings)}
    status, out, err = await run(sys.executable, "-m", "agents.cli", "order", "place",
                                 "--sku", "SKU-0002:3", env=env)
    assert status == 0, err
    order_id = json.loads(out)["order_id"]
    row = await terminal(stack, order_id)
    assert (row["status"], row["amount_cents"]) == ("CONFIRMED", 3 * price_of("SKU-0002"))


# ---- prices come from the catalogue --------------------------------------------


async def post_order(http: aiohttp.ClientSession, stack: Stack, line: dict[str, Any]) -> str:
    order = {"customer_id": "edge", "payment_token": "tok_visa", "lines": [line]}
    async with http.post(f"{stack.web_url('orders-0')}/orders/", json=order) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["order_id"])


async def test_an_order_priced_at_zero_by_the_client_is_rejected_and_never_charged(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    order_id = await post_order(http, stack, {"sku": "SKU-0001", "quantity": 2,
                                              "unit_price_cents": 0})
    row = await terminal(stack, order_id)
    assert row["status"] == "CANCELLED"
    assert row["reason"] == "price mismatch: SKU-0001 costs 500 cents, the order says 0"
    assert row["amount_cents"] is None
    settled = await eventually(lambda: captured(stack, order_id), lambda c: c != [], 30,
                               "the cancel reached payments")
    assert settled == [("VOIDED", 0)]  # the order can never be charged


async def test_an_order_without_prices_is_charged_the_catalogue_price(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    order_id = await post_order(http, stack, {"sku": "SKU-0005", "quantity": 3})
    row = await terminal(stack, order_id)
    amount = 3 * price_of("SKU-0005")
    assert (row["status"], row["amount_cents"]) == ("CONFIRMED", amount)
    assert await captured(stack, order_id) == [("CAPTURED", amount)]
    assert (await shown(http, stack, order_id))["amount_cents"] == amount


async def test_the_audit_flags_a_capture_other_than_the_catalogue_price(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Charged 1 cent more than the catalogue, with the order row agreeing: still a violation."""
    order_id = await post_order(http, stack, {"sku": "SKU-0006", "quantity": 1})
    assert (await terminal(stack, order_id))["status"] == "CONFIRMED"
    clean = await eventually(lambda: audit(stack.settings, settle_grace_s=0),
                             lambda r: r.ok and r.in_flight == 0, 30, "a clean audit")
    assert clean.ok
    more = "amount_cents = amount_cents + 1"
    await query(stack.settings, "payments",
                f"UPDATE psp_charges SET {more} WHERE idempotency_key = $1", order_id)
    await query(stack.settings, "orders", f"UPDATE orders SET {more} WHERE order_id = $1",
                order_id)
    try:
        report = await audit(stack.settings, settle_grace_s=0)
        [confirmed] = [i for i in report.invariants if i.name.startswith("confirmed:")]
        expected = price_of("SKU-0006")
        assert confirmed.violations == [
            f"{order_id} CONFIRMED: captured {expected + 1} != catalogue {expected}"]
    finally:
        less = "amount_cents = amount_cents - 1"
        await query(stack.settings, "payments",
                    f"UPDATE psp_charges SET {less} WHERE idempotency_key = $1", order_id)
        await query(stack.settings, "orders", f"UPDATE orders SET {less} WHERE order_id = $1",
                    order_id)


# ---- bad input and dead letters -------------------------------------------------


async def dead_letter_page(http: aiohttp.ClientSession, stack: Stack, headers: dict[str, str],
                           **params: str) -> tuple[int, Any]:
    url = f"{stack.web_url('orchestrator-0')}/dead-letters/"
    async with http.get(url, params=params, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_place_order_over_kafka_beyond_the_bounds_is_a_dead_letter_naming_the_field(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    order_id = str(uuid.uuid4())
    body = PlaceOrder(customer_id="edge-bounds", payment_token="tok_visa",
                      lines=[OrderLine(sku="SKU-0001", quantity=20_000)])
    async with OrderClient(stack.settings) as client:
        await client.send(new_envelope(order_id, body, producer="edge-test"))

    async def letters() -> list[dict[str, Any]]:
        _, page = await dead_letter_page(http, stack, ADMIN, reason_contains="quantity",
                                         limit="500")
        return [x for x in page["dead_letters"] if x["key"] == order_id]

    [letter] = await eventually(letters, lambda found: len(found) == 1, 30, "the dead letter")
    assert letter["service"] == "orders"
    assert letter["reason"] == ("invalid PlaceOrder: lines[0].quantity:"
                                " Input should be less than or equal to 10000")
    assert await query(stack.settings, "orders", "SELECT 1 FROM orders WHERE order_id = $1",
                       order_id) == []


@pytest.fixture(scope="module")
async def parked(stack: Stack) -> tuple[str, list[str]]:
    """Seven dead letters spread over the partitions, their reasons marked; (marker, keys)."""
    marker = f"edge-page-{uuid.uuid4().hex[:8]}"
    keys = [str(uuid.uuid4()) for _ in range(7)]
    async with OrderClient(stack.settings) as client:
        for i, key in enumerate(keys):
            headers = [("oms-dlq-reason", f"{marker} #{i}".encode()),
                       ("oms-dlq-service", b"orders"), ("oms-dlq-topic", b"oms.order-commands")]
            await client._producer.send_and_wait(  # noqa: SLF001 - a parked record
                stack.settings.topic("dead-letters"), b"payload", key=key.encode(),
                headers=headers, partition=i % stack.settings.partitions)
    return marker, keys


async def test_dead_letters_are_read_with_the_token_in_bounded_pages(
    stack: Stack, http: aiohttp.ClientSession, parked: tuple[str, list[str]]
) -> None:
    marker, keys = parked

    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"}):
        assert (await dead_letter_page(http, stack, headers))[0] == 401

    async def all_pages() -> list[list[str]]:
        pages, after = [], None
        while True:
            params = {"reason_contains": marker, "limit": "2", **({"after": after} if after
                                                                  else {})}
            status, page = await dead_letter_page(http, stack, ADMIN, **params)
            assert status == 200 and page["limit"] == 2 and len(page["dead_letters"]) <= 2
            pages.append([x["key"] for x in page["dead_letters"]])
            after = page["next"]
            if after is None:
                return pages

    pages = await eventually(all_pages, lambda p: sum(len(x) for x in p) == len(keys), 30,
                             "every dead letter, page by page")
    found = [key for page in pages for key in page]
    assert sorted(found) == sorted(keys)  # each once: pages neither overlap nor skip
    assert len(pages) >= 4

    status, capped = await dead_letter_page(http, stack, ADMIN, limit="100000")
    assert status == 200 and capped["limit"] == 500
    for bad, field in (({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                       ({"after": "soon"}, "after")):
        status, body = await dead_letter_page(http, stack, ADMIN, **bad)
        assert status == 400 and body["error"].startswith(f"{field}: "), body


async def test_the_page_reads_only_what_it_needs(
    stack: Stack, parked: tuple[str, list[str]]
) -> None:
    """A page of 2 from the start reads 2 records, however long the topic is."""
    from agents.messaging.redrive import Filters, read_page

    page = await read_page(stack.settings, Filters(), limit=2)
    assert len(page.letters) == 2 and page.scanned == 2 and page.next is not None
    narrow = await read_page(stack.settings, Filters(reason_contains="matches nothing"),
                             limit=2, scan_max=3)
    assert narrow.letters == [] and narrow.scanned == 3 and narrow.next is not None
    assert re.fullmatch(r"\d+:\d+", str(narrow.next))


async def test_no_log_line_or_view_shows_a_payment_token(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """An order and a dead-lettered order with the same token: neither leaves it anywhere."""
    token = f"tok_edge_{uuid.uuid4().hex}"
    order = {"customer_id": "edge-secret", "payment_token": token,
             "lines": [{"sku": "SKU-0007", "quantity": 1}]}
    async with http.post(f"{stack.web_url('orders-0')}/orders/", json=order) as resp:
        assert resp.status == 202
        order_id = str((await resp.json())["order_id"])
    refused = {**order, "lines": [{"sku": "SKU-0007", "quantity": 0}]}
    async with http.post(f"{stack.web_url('orders-0')}/orders/", json=refused) as resp:
        assert resp.status == 422
        seen = [await resp.text()]
    bad_id = str(uuid.uuid4())
    body = PlaceOrder(customer_id="edge-secret", payment_token=token,
                      lines=[OrderLine(sku="SKU-0007", quantity=0)])
    async with OrderClient(stack.settings) as client:
        await client.send(new_envelope(bad_id, body, producer="edge-test"))
    assert (await terminal(stack, order_id))["status"] == "CONFIRMED"

    async def parked() -> list[dict[str, Any]]:
        _, page = await dead_letter_page(http, stack, ADMIN, reason_contains="quantity",
                                         limit="500")
        return [x for x in page["dead_letters"] if x["key"] == bad_id]

    seen.append(json.dumps(await eventually(parked, bool, 30, "the dead letter")))
    seen.append(json.dumps(await shown(http, stack, order_id)))
    for path in (f"/sagas/{order_id}/", "/sagas/recent/", "/metrics"):
        async with http.get(stack.web_url("orchestrator-0") + path) as resp:
            seen.append(await resp.text())
    logs = [p.read_text(errors="replace")
            for p in (Path(stack.settings.data_dir) / "logs").glob("*.log")]
    assert any("invalid PlaceOrder: lines[0].quantity" in text for text in logs)  # logged
    for text in seen + logs:
        assert token not in text
