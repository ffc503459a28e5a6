"""The inventory web views: stock of every SKU, and stock by SKU."""

from __future__ import annotations

from faust.types import AppT
from faust.web import Request, Response, View

from agents.messaging.consumer import ServiceConsumer
from stores import inventory


def add_inventory_views(app: AppT, runtime: ServiceConsumer) -> None:
    """Register ``/stock/`` and ``/stock/{sku}/``."""

    @app.page("/stock/")
    class StockList(View):
        async def get(self, request: Request) -> Response:
            await runtime.start()
            async with runtime.pool.acquire() as conn:
                levels = await inventory.stock_levels(conn)
            return self.json({"stock": levels, "skus": len(levels)})

    @app.page("/stock/{sku}/")
    class StockView(View):
        async def get(self, request: Request, sku: str) -> Response:
            if len(sku) > 64:
                return self.json({"error": "sku: at most 64 characters"}, status=400)
            await runtime.start()
            async with runtime.pool.acquire() as conn:
                stock = await inventory.stock_of(conn, sku)
            if stock is None:
                return self.json({"error": "unknown sku", "sku": sku}, status=404)
            return self.json(stock)
