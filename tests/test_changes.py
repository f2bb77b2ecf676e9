from datetime import UTC, datetime

import pytest

from close_opps import Change, ChangeKind, Opportunity

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _opp(id_: str = "o1") -> Opportunity:
    return Opportunity(provider="close", id=id_, created_at=T0, updated_at=T0)


def test_upsert_carries_the_record() -> None:
    change = Change.upsert(_opp(), occurred_at=T0)
    assert change.kind is ChangeKind.UPSERT
    assert (change.provider, change.id, change.opportunity) == ("close", "o1", _opp())


def test_delete_carries_no_record_and_kind_values_are_strings() -> None:
    change = Change.delete("getraze", "x")
    assert change.kind == "delete"
    assert change.opportunity is None
    assert change.occurred_at is None
    assert Change(kind="upsert", provider="close", id="o1", opportunity=_opp()).kind is (
        ChangeKind.UPSERT
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "upsert", "provider": "close", "id": "o1"},
        {"kind": "delete", "provider": "close", "id": "o1", "opportunity": _opp()},
        {"kind": "upsert", "provider": "close", "id": "o2", "opportunity": _opp()},
        {"kind": "delete", "provider": "close", "id": "o1", "occurred_at": datetime(2026, 1, 1)},
        {"kind": "rename", "provider": "close", "id": "o1"},
    ],
)
def test_inconsistent_changes_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Change(**kwargs)  # type: ignore[arg-type]
