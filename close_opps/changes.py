"""Changes: what happened to an opportunity, the same for a polled feed and a webhook.

A consumer applies :class:`Change` records in order (an upsert replaces the stored record, a
delete removes it); applying one twice does no harm.
"""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from close_opps.model import Opportunity

__all__ = ["Change", "ChangeKind"]


class ChangeKind(enum.StrEnum):
    """What a :class:`Change` does to a copy."""

    UPSERT = "upsert"
    DELETE = "delete"


def _aware(
    instance: Change, attribute: attrs.Attribute[datetime | None], value: datetime | None
) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{attribute.name} must be timezone-aware, got {value!r}")


def _opportunity_matches_kind(
    instance: Change, attribute: attrs.Attribute[Opportunity | None], value: Opportunity | None
) -> None:
    if instance.kind is ChangeKind.UPSERT and value is None:
        raise ValueError("an upsert carries the current record: opportunity is required")
    if instance.kind is ChangeKind.DELETE and value is not None:
        raise ValueError("a delete carries no record: opportunity must be None")
    if value is not None and (value.provider, value.id) != (instance.provider, instance.id):
        raise ValueError(
            f"opportunity {value.provider}/{value.id} does not match the change's "
            f"{instance.provider}/{instance.id}"
        )


@attrs.frozen(kw_only=True)
class Change:
    """One change to one opportunity.

    Attributes:
        kind: :attr:`ChangeKind.UPSERT` (the record is new or changed) or
            :attr:`ChangeKind.DELETE` (it is gone).
        provider: the provider's name, as in :attr:`Opportunity.provider`.
        id: the opportunity's id at the provider.
        opportunity: the current record for an upsert; ``None`` for a delete.
        occurred_at: when the change happened (timezone-aware), or ``None`` when the provider
            cannot tell (a deletion found by reconciliation).
    """

    kind: ChangeKind = attrs.field(converter=ChangeKind)
    provider: str
    id: str
    opportunity: Opportunity | None = attrs.field(
        default=None, validator=_opportunity_matches_kind, repr=False
    )
    occurred_at: datetime | None = attrs.field(default=None, validator=_aware)

    @classmethod
    def upsert(cls, opportunity: Opportunity, *, occurred_at: datetime | None = None) -> Change:
        """The change that stores ``opportunity`` as it is now."""
        return cls(
            kind=ChangeKind.UPSERT,
            provider=opportunity.provider,
            id=opportunity.id,
            opportunity=opportunity,
            occurred_at=occurred_at,
        )

    @classmethod
    def delete(cls, provider: str, id: str, *, occurred_at: datetime | None = None) -> Change:
        """The change that removes ``provider``/``id`` from a copy."""
        return cls(kind=ChangeKind.DELETE, provider=provider, id=id, occurred_at=occurred_at)
