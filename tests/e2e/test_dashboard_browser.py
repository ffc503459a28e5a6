"""The tracker's dashboard, rendered by headless Chromium against a running stack."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.dev.catalogue import REGULAR_SKUS, price_of
from agents.dev.demo import wait_terminal
from agents.dev.stack import Stack
from agents.messaging.client import OrderClient
from agents.orders.intake import LineRequest, PlaceOrderRequest
from tests.conftest import make_settings, running_stack

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    async with running_stack(make_settings(tmp_path_factory.mktemp("dashboard"))) as running:
        yield running


async def render(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (Chromium's virtual time, no wall-clock wait)."""
    assert CHROMIUM is not None
    mode = ["--dump-dom"]
    if screenshot:
        mode = [f"--screenshot={screenshot}", "--window-size=1200,900"]
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *mode, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_dashboard_shows_counts_and_a_timeline(stack: Stack, tmp_path: Path) -> None:
    sku = REGULAR_SKUS[3]
    requests = [PlaceOrderRequest(order_id=uuid.uuid4(), customer_id="dash", payment_token=token,
                                  lines=[LineRequest(sku=sku, quantity=1,
                                                     unit_price_cents=price_of(sku))])
                for token in ("tok_visa", "tok_visa", "tok_visa", "tok_decline")]
    async with OrderClient(stack.settings) as client:
        for request in requests:
            await client.place(request)
    ids = [str(r.order_id) for r in requests]
    assert await wait_terminal(stack.settings, ids, 60) == 0
    base = stack.web_url("orchestrator-0") + "/dashboard/"
    dom = await render(f"{base}?order_id={ids[0]}", tmp_path / "profile")
    assert 'id="count-total"><b>4</b>' in dom, dom[-3000:]
    assert 'id="count-CONFIRMED"><b>3</b>' in dom and 'id="count-CANCELLED"><b>1</b>' in dom
    for order_id in ids:
        assert f'data-order-id="{order_id}"' in dom
    assert f"{ids[0]} CONFIRMED" in dom
    for step in ("PlaceOrder", "OrderCreated", "InventoryReserved", "PaymentCompleted",
                 "OrderConfirmed"):
        assert f'data-type="{step}"' in dom
    await render(base, tmp_path / "profile2", screenshot=tmp_path / "dashboard.png")
    assert (tmp_path / "dashboard.png").stat().st_size > 1000
