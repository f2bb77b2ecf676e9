"""Redaction of API keys: the one place that knows every form a key travels in.

A key is sent raw (``X-API-Key``), as ``Bearer <key>``, or base64-encoded as a Basic user name
(``base64(key + ":")``, Close). A server may echo any of these back (in an error body, an HTML
page, a header, a record). Every live :class:`close_opps.http.Secret` registers its forms here;
:func:`redact` replaces each form of every live key with ``***``. It is applied by

- every :class:`~close_opps.errors.CloseOppsError` when it is built (message, vendor code,
  request id, record id, path, headers, body),
- :func:`safe_cause`, which stands in for a chained cause that would quote a key,
- :class:`RedactingFilter`, on the SDK's loggers and on stamina's,
- the command line, on everything it prints.
"""

from __future__ import annotations

import base64
import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import attrs

__all__ = [
    "MASK",
    "RedactingFilter",
    "forms_of",
    "get_logger",
    "live_forms",
    "redact",
    "redact_data",
    "register",
    "safe_cause",
]

MASK: Final = "***"
#: Forms shorter than this are not redacted: they would mangle ordinary text.
_MIN_FORM: Final = 4

_lock = threading.Lock()
_forms_by_token: dict[int, tuple[str, ...]] = {}
#: Every form of every live key, longest first; replaced as a whole, so readers need no lock.
_all_forms: tuple[str, ...] = ()
_next_token = 0


def forms_of(key: str) -> tuple[str, ...]:
    """Every form ``key`` is sent or echoed in, longest first.

    The raw key (which covers ``Bearer <key>``), its percent-encoding, and the standard and
    URL-safe base64 of ``key:`` (the Basic user name, which covers ``Basic …``) and of
    ``key``, each with and without its ``=`` padding.
    """
    forms = {key, quote(key, safe="")}
    for text in (f"{key}:", key):
        raw = text.encode("utf-8", "surrogatepass")
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            form = encoded.decode("ascii")
            forms.update((form, form.rstrip("=")))
    return tuple(sorted((f for f in forms if len(f) >= _MIN_FORM), key=len, reverse=True))


def _own_forms(key: str) -> tuple[str, ...]:
    """What :meth:`Secret.redact` replaces: :func:`forms_of`, and the raw key however short
    (asked explicitly, a short key is redacted; everywhere else it would mangle text)."""
    return tuple(sorted({key, *forms_of(key)}, key=len, reverse=True))


#: Tokens of keys whose owner is gone, dropped at the next registration. A finalizer only
#: appends here: it may run during a garbage collection inside :func:`register`, which holds
#: the lock (taking it there would deadlock).
_dead: list[int] = []


def _unregister(token: int) -> None:
    _dead.append(token)


def register(owner: object, key: str) -> tuple[str, ...]:
    """Redact ``key``'s forms everywhere for as long as ``owner`` lives; returns the forms
    ``owner`` redacts itself (the raw key included, however short).

    (The forms of a key whose owner is gone are dropped at the next registration: until then
    they are still redacted, which is harmless.)
    """
    global _next_token, _all_forms
    forms = forms_of(key)
    with _lock:
        while _dead:
            _forms_by_token.pop(_dead.pop(), None)
        token = _next_token
        _next_token += 1
        _forms_by_token[token] = forms
        every = {form for group in list(_forms_by_token.values()) for form in group}
        _all_forms = tuple(sorted(every, key=len, reverse=True))
    weakref.finalize(owner, _unregister, token)
    return _own_forms(key)


def live_forms() -> tuple[str, ...]:
    """Every form of every live key, longest first (what :func:`redact` replaces by default)."""
    return _all_forms


def redact(text: str, forms: tuple[str, ...] | None = None) -> str:
    """``text`` with every form of every live key (or of ``forms``) replaced by ``***``."""
    for form in _all_forms if forms is None else forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def redact_data(value: Any, forms: tuple[str, ...] | None = None) -> Any:
    """``value`` (decoded JSON, headers, an attrs record) with every string redacted, keys
    and values alike, and attrs instances rebuilt with ``attrs.evolve``; ``forms`` as in
    :func:`redact`.

    Returns ``value`` itself when nothing in it needed redacting.
    """
    if not (_all_forms if forms is None else forms):
        return value
    if isinstance(value, str):
        return redact(value, forms)
    if attrs.has(type(value)):
        changes = {}
        for field in attrs.fields(type(value)):
            if field.init:
                old = getattr(value, field.name)
                new = redact_data(old, forms)
                if new is not old:
                    changes[field.alias or field.name] = new
        return attrs.evolve(value, **changes) if changes else value
    if isinstance(value, Mapping):
        items = [(redact_data(k, forms), redact_data(v, forms)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        out = [redact_data(v, forms) for v in value]
        if all(a is b for a, b in zip(out, value, strict=True)):
            return value
        return tuple(out) if isinstance(value, tuple) else out
    return value


def _leaks(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in (str(current), repr(current)):
            if redact(text) != text:
                return True
        current = current.__cause__ or current.__context__
    return False


class RedactedCause(Exception):
    """Stands in for an exception whose text quoted a key: its type name and redacted text."""


def safe_cause(exc: BaseException) -> BaseException:
    """``exc`` itself, or a :class:`RedactedCause` with its redacted text if it (or anything
    chained to it) quotes a key. For ``raise CloseOppsError(...) from safe_cause(exc)``."""
    if not _all_forms or not _leaks(exc):
        return exc
    stand_in = RedactedCause(f"{type(exc).__name__}: {redact(str(exc))}")
    stand_in.__suppress_context__ = True
    return stand_in.with_traceback(exc.__traceback__)


class RedactingFilter(logging.Filter):
    """Redacts keys from a log record's message, arguments and extra string fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        if not _all_forms:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for name, value in list(vars(record).items()):
            if name in ("msg", "args") or name.startswith("_"):
                continue
            if isinstance(value, str):
                setattr(record, name, redact(value))
            elif isinstance(value, (tuple, list, Mapping)):
                setattr(record, name, redact_data(value))
        return True


_FILTER: Final = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the redacting filter attached (once).

    A logger's filters see only the records logged to it, not those of its children: every
    SDK module gets its logger here.
    """
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


get_logger("stamina")  # stamina logs retries with repr(exception) in its extra fields
