"""The demo's stock catalogue, seeded by ``oms init`` / ``oms up``.

Besides plenty of ordinary SKUs it holds one scarce SKU (contention: the
first orders get it, later ones are rejected) and one that is sold out.
"""

from __future__ import annotations

REGULAR_SKUS = tuple(f"SKU-{i:04d}" for i in range(1, 21))
SCARCE_SKU = "SKU-SCARCE"
SCARCE_UNITS = 10
SOLD_OUT_SKU = "SKU-SOLDOUT"


def catalogue(regular_units: int = 1_000_000) -> dict[str, tuple[int, int]]:
    """SKU -> (units, unit price in cents)."""
    items = {sku: (regular_units, 500 + 250 * i) for i, sku in enumerate(REGULAR_SKUS)}
    items[SCARCE_SKU] = (SCARCE_UNITS, 9_900)
    items[SOLD_OUT_SKU] = (0, 1_500)
    return items


def price_of(sku: str) -> int:
    """The catalogue price of a SKU: what a client is shown, and may quote with each line."""
    return catalogue()[sku][1]
