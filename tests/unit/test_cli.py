"""``oms order place`` refuses a bad order the way HTTP does: the field named, no value echoed."""

from __future__ import annotations

from click.testing import CliRunner

from agents.cli import main


def test_a_refused_order_names_the_field_and_never_echoes_the_token() -> None:
    secret = "tok_" + "7" * 70  # over the 64-character bound
    result = CliRunner().invoke(main, ["order", "place", "--sku", "SKU-0001:0", "--token", secret])
    assert result.exit_code == 2, result.output
    assert "payment_token" in result.output and "lines.0.quantity" in result.output
    assert secret not in result.output and "7777" not in result.output
