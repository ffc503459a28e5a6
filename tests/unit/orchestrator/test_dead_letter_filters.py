"""The dead-letter views' filters: one letter by position, and no misspelt filter ignored."""

from __future__ import annotations

import pytest

from agents.messaging.redrive import DeadLetter, Position
from agents.orchestrator.dead_letter_views import BadQuery, filters_of


def test_at_selects_one_dead_letter_by_partition_and_offset() -> None:
    filters = filters_of({"at": "2:17"})
    assert filters.at == Position(2, 17)
    assert filters.match(DeadLetter(2, 17, b"k", b"v"))
    assert not filters.match(DeadLetter(2, 18, b"k", b"v"))
    assert not filters.match(DeadLetter(1, 17, b"k", b"v"))


@pytest.mark.parametrize(("body", "field"), [
    ({"at": "first"}, "at"), ({"reason_contain": "x"}, "reason_contain"), ({"limit": "0"}, "limit"),
])
def test_a_bad_or_unknown_field_is_refused_by_name_not_ignored(body: dict[str, object],
                                                               field: str) -> None:
    """Ignored, a misspelt filter would make a re-drive take every dead letter."""
    with pytest.raises(BadQuery, match=f"^{field}: "):
        filters_of(body, known=("dry_run",))
    assert filters_of({"dry_run": True}, known=("dry_run",)).at is None
