"""Seeded sample deals, and their rendering into each vendor's record form.

Everything here is a pure function of a seed: no wall clock, no global random state. A
:class:`Deal` is vendor-neutral; ``render_*`` turn it into the JSON a vendor sends. Vendor
ids are derived by hashing ``(seed, vendor, kind, index)``, so they are stable whatever the
number of records asked for, and the first ``k`` deals of a seed are the same for any count.
"""

from __future__ import annotations

import functools
import hashlib
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

import attrs

__all__ = [
    "CURRENCIES",
    "RANGE_END",
    "RANGE_START",
    "REFERENCE_TODAY",
    "Comment",
    "Company",
    "Contact",
    "Deal",
    "User",
    "close_timestamp",
    "companies",
    "generate_deals",
    "getraze_timestamp",
    "new_deal",
    "reevo_timestamp",
    "render_close",
    "render_getraze_detail",
    "render_getraze_documented",
    "render_getraze_list",
    "render_reevo",
]

JSON = dict[str, Any]
Status = Literal["open", "won", "lost"]
ValuePeriod = Literal["one_time", "monthly", "annual"]

#: Currencies the deals use, with their weights.
CURRENCIES: Final = ("USD", "EUR", "BRL", "GBP")
_CURRENCY_WEIGHTS: Final = (45, 20, 20, 15)
_SYMBOLS: Final = {"USD": "$", "EUR": "€", "BRL": "R$", "GBP": "£"}

#: Every timestamp of the seeded data lies in this range, for ``today=REFERENCE_TODAY``;
#: for another ``today`` the whole data set is moved by whole days, so that its newest
#: records were updated in the days just before ``today`` ("the last 7 days" finds some).
RANGE_START: Final = datetime(2025, 1, 1, tzinfo=UTC)
RANGE_END: Final = datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC)
#: The ``today`` for which the data lies in ``RANGE_START``..``RANGE_END`` exactly.
REFERENCE_TODAY: Final = date(2026, 7, 1)

#: Open stages in pipeline order, with their base closing probability (percent).
OPEN_STAGES: Final = (
    ("new", 10),
    ("contacted", 20),
    ("qualified", 40),
    ("proposal", 60),
    ("negotiation", 80),
)
PIPELINES: Final = ("Sales", "Partnerships")
SOURCES: Final = ("linkedin", "google_maps", "list", "paid_traffic", "other")
_SOURCE_WEIGHTS: Final = (40, 20, 20, 10, 10)
CAMPAIGNS: Final = (
    "Q1 LinkedIn Outreach",
    "EMEA Webinar Follow-up",
    "Partner Referral Program",
    "Google Maps Prospecting - SP",
)

_USERS: Final = (
    ("Ana Owner", "owner@acme.test"),
    ("John Doe", "john.doe@acme.test"),
    ("Beatriz Santos", "beatriz@acme.test"),
    ("Oliver Smith", "oliver@acme.test"),
    ("Claire Dubois", "claire@acme.test"),
    ("Kenji Watanabe", "kenji@acme.test"),
    ("Lucas Oliveira", "lucas@acme.test"),
    ("Emma Fischer", "emma@acme.test"),
)
_COMPANIES: Final = (
    ("Globex", "US", "Springfield"),
    ("Initech", "US", "Austin"),
    ("Umbrella", "CN", "Shanghai"),
    ("Acme Corp", "US", "Phoenix"),
    ("Hooli", "US", "Palo Alto"),
    ("Stark Industries", "US", "New York"),
    ("Wayne Enterprises", "US", "Gotham"),
    ("Bluth Company", "US", "Newport Beach"),
    ("Soylent", "US", "Chicago"),
    ("Tyrell Corporation", "US", "Los Angeles"),
    ("Cyberdyne Systems", "US", "Sunnyvale"),
    ("Vandelay Industries", "US", "New York"),
    ("Wonka Industries", "GB", "London"),
    ("Sterling Cooper", "US", "New York"),
    ("Dunder Mifflin", "US", "Scranton"),
    ("Oceanic Airlines", "AU", "Sydney"),
    ("Pied Piper", "US", "Palo Alto"),
    ("Monarch Solutions", "GB", "Manchester"),
    ("Nordwind Logistik", "DE", "Hamburg"),
    ("Brauhaus Kessler", "DE", "München"),
    ("Lumière & Fils", "FR", "Lyon"),
    ("Atelier Moreau", "FR", "Paris"),
    ("Padaria Pão Quente", "BR", "São Paulo"),
    ("Construtora Horizonte", "BR", "Belo Horizonte"),
    ("Café Aurora", "BR", "Curitiba"),
    ("Tecnologia Jacarandá", "BR", "Rio de Janeiro"),
    ("Fjord Analytics", "NO", "Oslo"),
    ("Kowalski Software", "PL", "Kraków"),
    ("Tulip Fintech", "NL", "Amsterdam"),
    ("Sakura Robotics", "JP", "Osaka"),
    ("Maple Leaf Health", "CA", "Toronto"),
    ("Outback Mining", "AU", "Perth"),
    ("Iberia Solar", "ES", "Sevilla"),
    ("Alpine Data AG", "CH", "Zürich"),
    ("Thames Water Tech", "GB", "Reading"),
    ("Massive Dynamic", "US", "Boston"),
)
_FIRST_NAMES: Final = (
    "Maria",
    "John",
    "Chen",
    "Fernanda",
    "Pedro",
    "Sophie",
    "Lars",
    "Aisha",
    "Tom",
    "Yuki",
    "Giulia",
    "Rafael",
    "Hannah",
    "Mateus",
    "Zoë",
    "Ólafur",
    "Priya",
    "Carlos",
)
_LAST_NAMES: Final = (
    "Silva",
    "Doe",
    "Wei",
    "Costa",
    "Almeida",
    "Martin",
    "Nielsen",
    "Khan",
    "Brown",
    "Tanaka",
    "Rossi",
    "Souza",
    "Müller",
    "Ferreira",
    "O'Brien",
    "Jónsson",
    "Patel",
    "García",
)
_TITLES: Final = ("CTO", "CEO", "Founder", "VP Sales", "Head of Operations", "CFO", "IT Manager")
_DEAL_KINDS: Final = (
    "Platform deal",
    "Expansion",
    "Pilot",
    "Renewal",
    "Annual license",
    "Onboarding package",
    "Support plan",
    "Data migration",
)
_NOTES: Final = (
    "Hot lead",
    "Needs a security review before signing.",
    "Budget approved for next quarter.",
    "Asked for a discount on the annual plan.",
    "Champion left the company; re-engaging.",
    "Wants SSO and audit logs.",
    "Call scheduled for next week",
    "Procurement is slow — follow up monthly.",
    "Comparing us with two competitors.",
    "Interested in enterprise plan",
)
_COMPETITORS: Final = ("Pipedrive", "HubSpot", "Salesforce", "Zoho", "RD Station")
_REGIONS: Final = ("NA", "EMEA", "LATAM", "APAC")
_LOSS_NOTES: Final = ("Chose a competitor", "No budget", "Timing", "No decision")


@attrs.frozen(kw_only=True)
class User:
    """A sales rep of the seeded organisation."""

    index: int
    name: str
    email: str


@attrs.frozen(kw_only=True)
class Contact:
    """A person at a company."""

    index: int
    name: str
    email: str | None
    phone: str | None
    title: str | None
    location: str
    profile_url: str | None


@attrs.frozen(kw_only=True)
class Company:
    """A customer company (a Close lead, a Reevo account)."""

    index: int
    name: str
    country: str
    city: str
    contacts: tuple[Contact, ...]


@attrs.frozen(kw_only=True)
class Comment:
    """A comment on a deal (Getraze shows them on ``get``)."""

    index: int
    content: str
    user: User
    created_at: datetime


@attrs.frozen(kw_only=True)
class Deal:
    """A vendor-neutral seeded deal; ``render_*`` turn it into vendor records.

    ``stage`` is one of the :data:`OPEN_STAGES` names for open deals, else ``"won"``,
    ``"lost"`` or ``"discarded"`` (a lost deal that Getraze calls discarded).
    """

    index: int
    group: int
    title: str
    company: Company
    contact: Contact | None
    owner: User
    assigned: bool
    creator: User | None
    currency: str
    amount: Decimal
    value_period: ValuePeriod
    status: Status
    stage: str
    pipeline: str
    confidence: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    expected_close: date | None
    note: str | None
    source: str
    campaign: str | None
    custom: dict[str, Any] = attrs.field(hash=False)
    comments: tuple[Comment, ...]
    participants: tuple[User, ...]
    competitors: tuple[str, ...]
    score: int


# ----------------------------------------------------------------------------- generation


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"close-opps-sandbox:{seed}:{stream}")  # noqa: S311 - not crypto


def _digest(seed: int, *parts: object) -> bytes:
    text = ":".join(str(part) for part in (seed, *parts))
    return hashlib.sha256(text.encode()).digest()


_B62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=1 << 16)
def close_id(seed: int, prefix: str, *parts: object, length: int = 43) -> str:
    """A Close-style id (``oppo_`` + base62), stable for ``(seed, prefix, parts)``."""
    number = int.from_bytes(_digest(seed, "close", prefix, *parts) * 2, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(_B62[rest])
    return f"{prefix}_{''.join(chars)}"


@functools.lru_cache(maxsize=1 << 16)
def uuid_for(seed: int, vendor: str, *parts: object) -> str:
    """A version 4 UUID string, stable for ``(seed, vendor, parts)``."""
    return str(uuid.UUID(bytes=_digest(seed, vendor, *parts)[:16], version=4))


def _instant(rng: random.Random, start: datetime, end: datetime) -> datetime:
    seconds = int((end - start).total_seconds())
    return start + timedelta(seconds=rng.randrange(seconds), milliseconds=rng.randrange(1000))


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    if end <= start:
        return end
    span = end - start
    return start + span * rng.random()


def _universe(seed: int) -> tuple[tuple[User, ...], tuple[Company, ...]]:
    rng = _rng(seed, "universe")
    users = tuple(User(index=i, name=n, email=e) for i, (n, e) in enumerate(_USERS))
    companies = []
    contact_index = 0
    for i, (name, country, city) in enumerate(_COMPANIES):
        domain = "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum()) + ".test"
        contacts = []
        for _ in range(rng.randint(1, 3)):
            first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
            local = "".join(ch for ch in first.lower() if ch.isascii() and ch.isalpha())
            has_email = rng.random() < 0.8
            has_phone = rng.random() < 0.5
            phone = None
            if has_phone:
                area, number = rng.randint(10, 99), rng.randint(10000, 99999)
                phone = f"+{rng.randint(1, 99)} {area} {number}-{rng.randint(1000, 9999)}"
            contacts.append(
                Contact(
                    index=contact_index,
                    name=f"{first} {last}",
                    email=f"{local or 'contact'}@{domain}" if has_email else None,
                    phone=phone,
                    title=rng.choice(_TITLES) if rng.random() < 0.85 else None,
                    location=city,
                    profile_url=f"https://linkedin.com/in/{local}-{contact_index}"
                    if rng.random() < 0.6
                    else None,
                )
            )
            contact_index += 1
        companies.append(
            Company(index=i, name=name, country=country, city=city, contacts=tuple(contacts))
        )
    return users, tuple(companies)


def _amount(rng: random.Random, period: ValuePeriod) -> Decimal:
    major = rng.choice((rng.randrange(4, 80) * 250, rng.randrange(10, 400) * 1000))
    if period == "monthly":
        major = max(50, major // 12 // 10 * 10)
    cents = rng.choice((0, 0, 0, 0, 0, 50, 99))
    return (Decimal(major) + Decimal(cents) / 100).quantize(Decimal("0.01"))


def companies(seed: int) -> tuple[Company, ...]:
    """The companies of ``seed``'s organisation (Close's leads, Reevo's accounts)."""
    return _universe(seed)[1]


def new_deal(seed: int, index: int, at: datetime) -> Deal:
    """A deal created at ``at`` (aware), for a record added while the sandbox runs.

    Deterministic for ``(seed, index)``; use an ``index`` no seeded deal has (the emulators
    count on from the largest one).
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    at = at.astimezone(UTC)
    users, all_companies = _universe(seed)
    rng = _rng(seed, f"created:{index}")
    deal = _deal(rng, index, -1, "single", at, users, all_companies)
    return attrs.evolve(
        deal,
        created_at=at,
        updated_at=at,
        closed_at=at if deal.status != "open" else None,
        expected_close=(at + timedelta(days=30)).date()
        if deal.status == "open"
        else at.date()
        if deal.status == "won"
        else None,
        comments=tuple(
            attrs.evolve(comment, created_at=at.replace(microsecond=0)) for comment in deal.comments
        ),
    )


def generate_deals(seed: int, count: int, *, today: date | None = None) -> list[Deal]:
    """Generate ``count`` deals for ``seed``, deterministically for a given ``today``.

    Deals come in *update groups*: a single deal, a bulk update (5-20 deals sharing one
    ``updated_at``) or an import (5-12 deals sharing both ``created_at`` and
    ``updated_at``), so exactly-once pagination over ties is really exercised. The first
    group is a bulk update in the three days before ``today`` (default: the current UTC
    date), and everything else is older: data about 18 months deep, dated relative to
    ``today``.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    anchor = datetime.now(UTC).date() if today is None else today
    return list(_shifted(seed, count, (anchor - REFERENCE_TODAY).days))


def _shift(value: Any, delta: timedelta) -> Any:
    if isinstance(value, (datetime, date)):
        return value + delta
    if isinstance(value, tuple):
        return tuple(_shift(v, delta) for v in value)
    if attrs.has(type(value)):
        return attrs.evolve(
            value,
            **{f.name: _shift(getattr(value, f.name), delta) for f in attrs.fields(type(value))},
        )
    return value


@functools.lru_cache(maxsize=8)
def _shifted(seed: int, count: int, days: int) -> tuple[Deal, ...]:
    deals = _generate(seed, count)
    if days == 0:
        return deals
    delta = timedelta(days=days)
    return tuple(_shift(deal, delta) for deal in deals)


@functools.lru_cache(maxsize=8)
def _generate(seed: int, count: int) -> tuple[Deal, ...]:
    users, companies = _universe(seed)
    rng = _rng(seed, "deals")
    deals: list[Deal] = []
    group = 0
    while len(deals) < count:
        roll = rng.random()
        if roll < 0.4:
            size, mode = 1, "single"
        elif roll < 0.8:
            size, mode = rng.randint(5, 20), "bulk_update"
        else:
            size, mode = rng.randint(5, 12), "import"
        if group == 0:  # recent activity: a bulk update in the last three days
            size, mode = rng.randint(5, 20), "bulk_update"
            shared = _instant(rng, RANGE_END - timedelta(days=3), RANGE_END)
        else:
            shared = _instant(rng, RANGE_START + timedelta(days=45), RANGE_END)
        for _ in range(min(size, count - len(deals))):
            deals.append(_deal(rng, len(deals), group, mode, shared, users, companies))
        group += 1
    return tuple(deals)


def _deal(
    rng: random.Random,
    index: int,
    group: int,
    mode: str,
    shared: datetime,
    users: tuple[User, ...],
    companies: tuple[Company, ...],
) -> Deal:
    company = rng.choice(companies)
    contact = rng.choice(company.contacts) if rng.random() < 0.9 else None
    owner = rng.choice(users)
    updated = shared if mode != "single" else _instant(rng, RANGE_START, RANGE_END)
    if mode == "import" or rng.random() < 0.15:
        created = updated
    else:
        back = timedelta(days=rng.randint(0, 180), seconds=rng.randrange(86400))
        created = max(RANGE_START, updated - back)
        created = created.replace(microsecond=created.microsecond // 1000 * 1000)
    period: ValuePeriod = rng.choices(("one_time", "monthly", "annual"), (50, 25, 25))[0]
    roll = rng.random()
    expected: date | None
    closed: datetime | None
    status: Status = "open" if roll < 0.55 else "won" if roll < 0.8 else "lost"
    if status == "open":
        stage, base = rng.choice(OPEN_STAGES)
        confidence = max(0, min(100, base + rng.choice((-5, 0, 0, 5))))
        closed = None
        expected = (created + timedelta(days=rng.randint(14, 180))).date()
    else:
        stage = status if status == "won" or rng.random() < 0.7 else "discarded"
        confidence = 100 if status == "won" else 0
        closed = _between(rng, created, updated)
        closed = max(created, closed.replace(microsecond=closed.microsecond // 1000 * 1000))
        expected = closed.date() if status == "won" else None
    comments = []
    for c in range(rng.choice((0, 0, 1, 1, 2, 3))):
        comments.append(
            Comment(
                index=c,
                content=rng.choice(_NOTES),
                user=rng.choice(users),
                created_at=_between(rng, created, updated).replace(microsecond=0),
            )
        )
    custom: dict[str, Any] = {}
    if rng.random() < 0.3:
        custom["contract_url"] = f"https://docs.example.com/contracts/{index:05d}.pdf"
    if rng.random() < 0.5:
        custom["seats"] = rng.randint(1, 500)
    if rng.random() < 0.6:
        custom["region"] = rng.choice(_REGIONS)
    participants = tuple(rng.sample(users, rng.choice((0, 1, 1, 2, 3))))
    competitors = tuple(rng.sample(_COMPETITORS, rng.choice((0, 0, 1, 2))))
    return Deal(
        index=index,
        group=group,
        title=f"{company.name} - {rng.choice(_DEAL_KINDS)}",
        company=company,
        contact=contact,
        owner=owner,
        assigned=rng.random() < 0.9,
        creator=rng.choice(users) if rng.random() < 0.5 else None,
        currency=rng.choices(CURRENCIES, _CURRENCY_WEIGHTS)[0],
        amount=_amount(rng, period),
        value_period=period,
        status=status,
        stage=stage,
        pipeline=PIPELINES[0] if rng.random() < 0.8 else PIPELINES[1],
        confidence=confidence,
        created_at=created,
        updated_at=updated,
        closed_at=closed,
        expected_close=expected,
        note=rng.choice(_NOTES) if rng.random() < 0.7 else None,
        source=rng.choices(SOURCES, _SOURCE_WEIGHTS)[0],
        campaign=rng.choice(CAMPAIGNS) if rng.random() < 0.5 else None,
        custom=custom,
        comments=tuple(comments),
        participants=participants,
        competitors=competitors,
        score=rng.randint(0, 100),
    )


# ----------------------------------------------------------------------------- timestamps


def close_timestamp(moment: datetime) -> str:
    """Close's form: ``2013-02-01T00:54:51.321000+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def getraze_timestamp(moment: datetime) -> str:
    """Getraze's (PostgreSQL's) form: ``2026-01-12 10:00:00+00``."""
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat(" ") + "+00"


def _js_date(day: date) -> str:
    return f"{day.isoformat()}T00:00:00.000Z"


def reevo_timestamp(moment: datetime) -> str:
    """Reevo's form: ``2023-11-07T05:31:56Z``."""
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


# ----------------------------------------------------------------------------- Close

#: Close's custom fields: our key -> the ``cf_`` id part.
_CLOSE_CUSTOM: Final = ("contract_url", "seats", "region")
_CLOSE_ACTIVE_LABELS: Final = {
    "new": "Active",
    "contacted": "Contacted",
    "qualified": "Qualified",
    "proposal": "Proposal Sent",
    "negotiation": "Negotiation",
}


def format_close_money(cents: int, currency: str) -> str:
    """Close's ``value_formatted`` style: ``$3,000``, ``R$1,234.50``."""
    symbol = _SYMBOLS.get(currency, f"{currency} ")
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    body = f"{whole:,}" if rest == 0 else f"{whole:,}.{rest:02d}"
    return f"{sign}{symbol}{body}"


def close_status(seed: int, deal: Deal) -> tuple[str, str, str]:
    """``(status_id, status_label, status_type)`` of a deal in Close."""
    if deal.status == "open":
        label, kind = _CLOSE_ACTIVE_LABELS[deal.stage], "active"
    elif deal.status == "won":
        label, kind = "Won", "won"
    else:
        label, kind = "Lost", "lost"
    return close_id(seed, "stat", deal.pipeline, label), label, kind


def render_close(seed: int, deal: Deal, *, schema_extras: bool = False) -> JSON:
    """The deal as Close's ``GET /opportunity/{id}/`` sends it.

    The key set is exactly that of the vendor's example records, plus ``custom.cf_*`` keys
    for the custom fields the deal has. ``schema_extras`` adds the optional keys of the
    OpenAPI schema (``contact_name``, ``lead_primary_email``, ``attachments``...).
    """
    value = int(deal.amount * 100)
    annualized = value * 12 if deal.value_period == "monthly" else value
    status_id, status_label, status_type = close_status(seed, deal)
    formatted = format_close_money(value, deal.currency)
    if deal.value_period == "monthly":
        formatted += " monthly"
    creator = close_id(seed, "user", deal.creator.index) if deal.creator else None
    record: JSON = {
        "annualized_expected_value": annualized * deal.confidence // 100,
        "annualized_value": annualized,
        "confidence": deal.confidence,
        "contact_id": close_id(seed, "cont", deal.contact.index) if deal.contact else None,
        "created_by": creator,
        "date_created": close_timestamp(deal.created_at),
        "date_lost": close_timestamp(deal.closed_at)
        if deal.status == "lost" and deal.closed_at
        else None,
        "date_updated": close_timestamp(deal.updated_at),
        "date_won": deal.closed_at.date().isoformat()
        if deal.status == "won" and deal.closed_at
        else None,
        "expected_value": value * deal.confidence // 100,
        "id": close_id(seed, "oppo", deal.index),
        "lead_id": close_id(seed, "lead", deal.company.index),
        "note": deal.note or "",
        "organization_id": close_id(seed, "orga", 0),
        "status_id": status_id,
        "updated_by": creator,
        "user_id": close_id(seed, "user", deal.owner.index),
        "value": value,
        "value_period": deal.value_period,
        "lead_name": deal.company.name,
        "pipeline_id": close_id(seed, "pipe", deal.pipeline, length=22),
        "pipeline_name": deal.pipeline,
        "status_label": status_label,
        "status_type": status_type,
        "user_name": deal.owner.name,
        "value_currency": deal.currency,
        "value_formatted": formatted,
    }
    if schema_extras:
        contact = deal.contact
        record.update(
            {
                "attachments": [],
                "comment_summary": None,
                "contact_name": contact.name if contact else None,
                "created_by_name": deal.creator.name if deal.creator else None,
                "integration_links": [],
                "is_stalled": False,
                "lead_primary_email": {
                    "email": contact.email,
                    "is_unsubscribed": False,
                    "type": "office",
                }
                if contact and contact.email
                else None,
                "lead_primary_phone": [
                    {
                        "country": deal.company.country,
                        "phone": contact.phone.replace(" ", "").replace("-", ""),
                        "phone_formatted": contact.phone,
                        "type": "office",
                    }
                ]
                if contact and contact.phone
                else None,
                "stall_status": None,
                "status_display_name": status_label,
                "suggested_action": None,
                "updated_by_name": deal.creator.name if deal.creator else None,
            }
        )
    for key in _CLOSE_CUSTOM:
        if key in deal.custom:
            record[f"custom.{close_id(seed, 'cf', key)}"] = deal.custom[key]
    return record


# ----------------------------------------------------------------------------- Getraze


def getraze_stage_name(deal: Deal) -> str:
    """Getraze's ``stage_name`` (its status) of a deal."""
    return "leads" if deal.stage == "new" else deal.stage


def _getraze_common(seed: int, deal: Deal) -> JSON:
    g = "getraze"
    stage_name = getraze_stage_name(deal)
    linkedin = deal.source == "linkedin"
    progressed = deal.stage not in ("new", "contacted")

    def step(fraction: float) -> str | None:
        return getraze_timestamp(deal.created_at + (deal.updated_at - deal.created_at) * fraction)

    return {
        "id": uuid_for(seed, g, "opportunity", deal.index),
        "title": deal.title,
        "value": f"{deal.amount:.2f}",
        "currency": deal.currency,
        "probability": deal.confidence,
        "expected_close_date": _js_date(deal.expected_close) if deal.expected_close else None,
        "pipeline_id": uuid_for(seed, g, "pipeline", deal.pipeline),
        "stage_id": uuid_for(seed, g, "stage", deal.pipeline, stage_name),
        "campaign_id": uuid_for(seed, g, "campaign", deal.campaign) if deal.campaign else None,
        "owner_user_id": uuid_for(seed, g, "user", deal.owner.index) if deal.assigned else None,
        "source": deal.source,
        "notes": deal.note,
        "sent_at": step(0.1) if linkedin else None,
        "accepted_at": step(0.2) if linkedin and deal.stage != "new" else None,
        "qualifying_started_at": step(0.3) if linkedin and progressed else None,
        "qualified_at": step(0.4) if progressed and deal.stage != "discarded" else None,
        "scheduled_at": None,
        "won_at": getraze_timestamp(deal.closed_at)
        if deal.stage == "won" and deal.closed_at
        else None,
        "lost_at": getraze_timestamp(deal.closed_at)
        if deal.stage == "lost" and deal.closed_at
        else None,
        "created_at": getraze_timestamp(deal.created_at),
        "updated_at": getraze_timestamp(deal.updated_at),
    }


def _getraze_people(seed: int, deal: Deal) -> JSON:
    contact = deal.contact
    owner = deal.owner if deal.assigned else None
    return {
        "contact_id": uuid_for(seed, "getraze", "contact", contact.index) if contact else None,
        "contact_name": contact.name if contact else None,
        "contact_email": contact.email if contact else None,
        "contact_phone": contact.phone if contact else None,
        "contact_company": deal.company.name,
        "contact_title": contact.title if contact else None,
        "contact_location": contact.location if contact else None,
        "contact_profile_url": contact.profile_url if contact else None,
        "contact_profile_picture": None,
        "campaign_name": deal.campaign,
        "owner_user_name": owner.name if owner else None,
        "owner_user_email": owner.email if owner else None,
    }


def render_getraze_list(seed: int, deal: Deal) -> JSON:
    """The deal as a record of Getraze's list, in the form its server sends today."""
    record = _getraze_common(seed, deal)
    record.update(_getraze_people(seed, deal))
    record["stage_name"] = getraze_stage_name(deal)
    record["pipeline_name"] = deal.pipeline
    return record


def render_getraze_detail(seed: int, deal: Deal) -> JSON:
    """The deal as Getraze's ``GET /opportunities/{id}`` sends it today (with comments)."""
    g = "getraze"
    common = _getraze_common(seed, deal)
    people = _getraze_people(seed, deal)
    lost = deal.stage == "lost"
    discarded = deal.stage == "discarded"
    closed = deal.closed_at
    return {
        "id": common["id"],
        "account_id": uuid_for(seed, g, "account", 0),
        "contact_id": people["contact_id"],
        "pipeline_id": common["pipeline_id"],
        "stage_id": common["stage_id"],
        "title": deal.title,
        "value": common["value"],
        "currency": deal.currency,
        "probability": deal.confidence,
        "expected_close_date": common["expected_close_date"],
        "won_at": common["won_at"],
        "lost_at": common["lost_at"],
        "loss_reason_id": uuid_for(seed, g, "loss_reason", deal.index % 4) if lost else None,
        "loss_notes": _LOSS_NOTES[deal.index % 4] if lost else None,
        "owner_user_id": common["owner_user_id"],
        "source_lead_id": None,
        "source": deal.source,
        "custom_fields": dict(deal.custom),
        "display_order": deal.index % 7,
        "created_by": uuid_for(seed, g, "user", deal.creator.index) if deal.creator else None,
        "created_at": common["created_at"],
        "updated_at": common["updated_at"],
        "campaign_id": common["campaign_id"],
        "sent_at": common["sent_at"],
        "accepted_at": common["accepted_at"],
        "qualifying_started_at": common["qualifying_started_at"],
        "qualified_at": common["qualified_at"],
        "scheduled_at": common["scheduled_at"],
        "invite_queued_at": None,
        "invite_expires_at": None,
        "invite_expired_at": None,
        "company_size": ("1-10", "11-50", "51-200", "201-1000")[deal.company.index % 4]
        if deal.index % 3
        else None,
        "budget": None,
        "timeline": None,
        "discard_reason_id": uuid_for(seed, g, "discard_reason", deal.index % 3)
        if discarded
        else None,
        "discard_notes": "Not a fit" if discarded else None,
        "discarded_at": getraze_timestamp(closed) if discarded and closed else None,
        "previous_status": "qualified" if deal.status != "open" else None,
        "previous_stage_id": uuid_for(seed, g, "stage", deal.pipeline, "qualified")
        if deal.status != "open"
        else None,
        "score": deal.score,
        "notes": deal.note,
        "closure_notes": "Closed after final review" if deal.status != "open" else None,
        "linkedin_profile_id": None,
        "provider_id": None,
        "sector_id": None,
        "lead_source_id": None,
        "contact_name": people["contact_name"],
        "contact_email": people["contact_email"],
        "contact_phone": people["contact_phone"],
        "contact_company": people["contact_company"],
        "contact_title": people["contact_title"],
        "campaign_name": deal.campaign,
        "owner_user_name": people["owner_user_name"],
        "owner_user_email": people["owner_user_email"],
        "comments": [
            {
                "id": uuid_for(seed, g, "comment", deal.index, c.index),
                "content": c.content,
                "user_name": c.user.name,
                "created_at": c.created_at.astimezone(UTC).isoformat(),
            }
            for c in deal.comments
        ],
    }


def render_getraze_documented(seed: int, deal: Deal) -> JSON:
    """The deal in the record form Getraze's documentation shows (``name``, ``deal_value``)."""
    g = "getraze"
    contact = deal.contact
    owner = deal.owner if deal.assigned else None

    def stamp(moment: datetime | None) -> str | None:
        return (
            moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
            if moment
            else None
        )

    return {
        "id": uuid_for(seed, g, "opportunity", deal.index),
        "name": contact.name if contact else deal.title,
        "email": contact.email if contact else None,
        "phone": contact.phone if contact else None,
        "company": deal.company.name,
        "position": contact.title if contact else None,
        "status": getraze_stage_name(deal),
        "source": deal.source,
        "deal_value": float(deal.amount),
        "deal_currency": deal.currency,
        "linkedin_url": contact.profile_url if contact else None,
        "notes": deal.note,
        "campaign": {"id": uuid_for(seed, g, "campaign", deal.campaign), "name": deal.campaign}
        if deal.campaign
        else None,
        "responsible_user": {"id": uuid_for(seed, g, "user", owner.index), "name": owner.name}
        if owner
        else None,
        "won_at": stamp(deal.closed_at) if deal.stage == "won" else None,
        "lost_at": stamp(deal.closed_at) if deal.stage == "lost" else None,
        "created_at": stamp(deal.created_at),
        "updated_at": stamp(deal.updated_at),
    }


# ----------------------------------------------------------------------------- Reevo

#: Reevo stage per canonical stage: (api_name, display_value, color, closing_probability, days)
_REEVO_STAGES: Final = {
    "new": ("prospecting", "Prospecting", "#9CA3AF", "0.1", 60),
    "contacted": ("discovery", "Discovery", "#60A5FA", "0.2", 45),
    "qualified": ("evaluation", "Evaluation", "#34D399", "0.4", 30),
    "proposal": ("proposal", "Proposal", "#FBBF24", "0.6", 21),
    "negotiation": ("negotiation", "Negotiation", "#F97316", "0.8", 14),
    "won": ("closed_won", "Closed Won", "#10B981", "1.0", 0),
    "lost": ("closed_lost", "Closed Lost", "#EF4444", "0.0", 0),
    "discarded": ("closed_lost", "Closed Lost", "#EF4444", "0.0", 0),
}
_REEVO_TYPES: Final = (
    ("new_business", "New Business", "#3B82F6"),
    ("expansion", "Expansion", "#8B5CF6"),
    ("renewal", "Renewal", "#14B8A6"),
)
_REEVO_SOURCES: Final = ("manual", "import", "api", "email_sync")
_GEO: Final = {
    "US": (37.09, -95.71),
    "CN": (31.23, 121.47),
    "GB": (51.51, -0.13),
    "AU": (-33.87, 151.21),
    "DE": (53.55, 9.99),
    "FR": (45.76, 4.84),
    "BR": (-23.55, -46.63),
    "NO": (59.91, 10.75),
    "PL": (50.06, 19.94),
    "NL": (52.37, 4.90),
    "JP": (34.69, 135.50),
    "CA": (43.65, -79.38),
    "ES": (37.39, -5.98),
    "CH": (47.37, 8.54),
}

#: Attribute name -> value_type of every attribute a Reevo record carries.
REEVO_VALUE_TYPES: Final = {
    "id": "uuid",
    "organization_id": "uuid",
    "created_at": "timestamp",
    "display_name": "string",
    "status": "enum",
    "stage": "opportunity_stage",
    "owner_user_id": "record_reference",
    "account_id": "record_reference",
    "participant_user_id_list": "record_reference",
    "created_by_user_id": "record_reference",
    "updated_at": "timestamp",
    "next_step_details": "long_text",
    "next_step_due_at": "timestamp",
    "next_meeting_date": "timestamp",
    "target_go_live_date": "timestamp",
    "amount": "currency",
    "forecast_weighted_amount": "currency",
    "outcome": "enum",
    "created_source": "enum",
    "anticipated_closing_at": "timestamp",
    "closed_at": "timestamp",
    "archived_at": "timestamp",
    "expires_at": "timestamp",
    "last_activity_at": "timestamp",
    "last_voice_call": "timestamp",
    "last_meeting": "timestamp",
    "last_global_thread": "timestamp",
    "last_engaged_at": "timestamp",
    "last_outreached_at": "timestamp",
    "last_inbound_meeting_at": "timestamp",
    "last_inbound_voice_call_at": "timestamp",
    "last_inbound_global_thread_at": "timestamp",
    "last_outbound_meeting_at": "timestamp",
    "last_outbound_voice_call_at": "timestamp",
    "last_outbound_global_thread_at": "timestamp",
    "stage_last_shifted_at": "timestamp",
    "owner_team_id": "record_reference",
    "closed_by_user_id": "record_reference",
    "primary_contact_id": "record_reference",
    "updated_by_user_id": "record_reference",
    "closed_lost_custom_detail": "long_text",
    "closed_won_custom_detail": "long_text",
    "competitors_mentioned_other": "string",
    "primary_competitor_other": "string",
    "type_id": "select",
    # custom attributes of the seeded organisation
    "health_score": "percent",
    "is_strategic": "boolean",
    "hq_location": "geo_point",
}
#: The Reevo attributes whose value is a list of ``{value, value_type}`` objects.
REEVO_LIST_ATTRIBUTES: Final = frozenset(
    {"participant_user_id_list", "competitors_mentioned_other"}
)


def _attr(value: Any, value_type: str) -> JSON:
    return {"value": value, "value_type": value_type}


def _ref(record_id: str | None, record_type: str) -> JSON:
    if record_id is None:
        return _attr(None, "record_reference")
    return _attr(
        {"related_record_id": record_id, "related_record_type": record_type}, "record_reference"
    )


def _money(amount: Decimal, currency: str) -> JSON:
    return {"amount": f"{amount.quantize(Decimal('0.01'))}", "currency_code": currency}


def render_reevo(seed: int, deal: Deal) -> JSON:
    """The deal as Reevo's ``GET /opportunity/{id}`` sends it (inside ``data``).

    Every attribute is ``{"value", "value_type"}`` (``value`` may be ``null``); list
    attributes are lists of those (maybe empty).
    """
    r = "reevo"
    record_id = uuid_for(seed, r, "opportunity", deal.index)
    created = reevo_timestamp(deal.created_at)
    updated = reevo_timestamp(deal.updated_at)
    api_name, display, color, probability, days = _REEVO_STAGES[deal.stage]
    type_api, type_display, type_color = _REEVO_TYPES[deal.index % 3]
    closed = deal.closed_at if deal.status != "open" else None
    owner = deal.owner if deal.assigned else None
    lat, lng = _GEO.get(deal.company.country, (0.0, 0.0))

    def user_ref(user: User | None) -> JSON:
        return _ref(uuid_for(seed, r, "user", user.index) if user else None, "user")

    def stamp(moment: datetime | str | None) -> JSON:
        if isinstance(moment, datetime):
            moment = reevo_timestamp(moment)
        return _attr(moment, "timestamp")

    activity = updated if deal.index % 4 else None
    weighted = deal.amount * Decimal(probability)
    attributes: JSON = {
        "id": _attr(record_id, "uuid"),
        "organization_id": _attr(uuid_for(seed, r, "organization", 0), "uuid"),
        "created_at": _attr(created, "timestamp"),
        "display_name": _attr(deal.title, "string"),
        "status": _attr("open" if deal.status == "open" else "closed", "enum"),
        "stage": _attr(
            {
                "id": uuid_for(seed, r, "stage", api_name),
                "display_value": display,
                "api_name": api_name,
                "color": color,
                "closing_probability": probability,
                "expected_days": days,
            },
            "opportunity_stage",
        ),
        "owner_user_id": user_ref(owner),
        "account_id": _ref(uuid_for(seed, r, "account", deal.company.index), "account"),
        "participant_user_id_list": [user_ref(user) for user in deal.participants],
        "created_by_user_id": user_ref(deal.creator),
        "updated_at": _attr(updated, "timestamp"),
        "next_step_details": _attr(deal.note, "long_text"),
        "next_step_due_at": stamp(
            deal.updated_at + timedelta(days=7) if deal.status == "open" else None
        ),
        "next_meeting_date": stamp(None),
        "target_go_live_date": stamp(
            datetime.combine(deal.expected_close, datetime.min.time(), UTC) + timedelta(days=30)
            if deal.expected_close and deal.status == "won"
            else None
        ),
        "amount": _attr(_money(deal.amount, deal.currency), "currency"),
        "forecast_weighted_amount": _attr(_money(weighted, deal.currency), "currency"),
        "outcome": _attr(None if deal.status == "open" else deal.status, "enum"),
        "created_source": _attr(_REEVO_SOURCES[deal.index % 4], "enum"),
        "anticipated_closing_at": stamp(
            datetime.combine(deal.expected_close, datetime.min.time(), UTC)
            if deal.expected_close
            else None
        ),
        "closed_at": stamp(closed),
        "archived_at": stamp(None),
        "expires_at": stamp(None),
        "last_activity_at": stamp(activity),
        "last_voice_call": stamp(None),
        "last_meeting": stamp(activity if deal.index % 3 == 0 else None),
        "last_global_thread": stamp(activity),
        "last_engaged_at": stamp(activity),
        "last_outreached_at": stamp(activity),
        "last_inbound_meeting_at": stamp(None),
        "last_inbound_voice_call_at": stamp(None),
        "last_inbound_global_thread_at": stamp(activity if deal.index % 2 else None),
        "last_outbound_meeting_at": stamp(None),
        "last_outbound_voice_call_at": stamp(None),
        "last_outbound_global_thread_at": stamp(activity),
        "stage_last_shifted_at": stamp(closed or deal.created_at),
        "owner_team_id": _ref(uuid_for(seed, r, "team", deal.pipeline), "team"),
        "closed_by_user_id": user_ref(deal.owner if closed else None),
        "primary_contact_id": _ref(
            uuid_for(seed, r, "contact", deal.contact.index) if deal.contact else None, "contact"
        ),
        "updated_by_user_id": user_ref(deal.creator),
        "closed_lost_custom_detail": _attr(
            _LOSS_NOTES[deal.index % 4] if deal.status == "lost" else None, "long_text"
        ),
        "closed_won_custom_detail": _attr(
            "Signed after pilot" if deal.status == "won" else None, "long_text"
        ),
        "competitors_mentioned_other": [_attr(name, "string") for name in deal.competitors],
        "primary_competitor_other": _attr(
            deal.competitors[0] if deal.competitors else None, "string"
        ),
        "type_id": _attr(
            {
                "id": uuid_for(seed, r, "type", type_api),
                "display_value": type_display,
                "api_name": type_api,
                "color": type_color,
            },
            "select",
        ),
        "health_score": _attr(deal.score, "percent"),
        "is_strategic": _attr(deal.amount >= 100_000, "boolean"),
        "hq_location": _attr({"lat": lat, "lng": lng}, "geo_point"),
    }
    return {
        "id": record_id,
        "created_at": created,
        "updated_at": updated,
        "attributes": attributes,
        "record_type": "opportunity",
    }
