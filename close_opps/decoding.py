"""Decoding vendor JSON into attrs classes, for adapters (built-in and plugins).

:func:`make_converter` gives a cattrs converter with strict primitive hooks, exact decimals
and aware datetimes; :func:`decode` structures one payload and turns every mismatch into a
:class:`~close_opps.DecodeError` naming the provider, the record id and the field path.
"""

from close_opps._decoding import (
    decode,
    listed,
    make_converter,
    parse_date,
    parse_datetime,
    parse_decimal,
    ref,
)

__all__ = [
    "decode",
    "listed",
    "make_converter",
    "parse_date",
    "parse_datetime",
    "parse_decimal",
    "ref",
]
