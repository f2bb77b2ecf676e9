"""How large is a change-feed cursor? The numbers in docs/changes.md.

Run: ``PYTHONPATH=. python bench/cursor_size.py [COUNT]``.

Random ids of each provider's form, 10,000 by default: UUIDs with a record fingerprint each
(Getraze, Reevo) and Close's ``oppo_`` + 43 base-62 characters (no fingerprint).
"""

from __future__ import annotations

import random
import sys
import uuid
from datetime import UTC, datetime

from close_opps.feed import FeedState, encode_cursor

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def main(count: int = 10_000) -> None:
    rng = random.Random(1)
    uuids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    reevo = FeedState(provider="reevo", known={i: rng.getrandbits(32) for i in uuids})
    close_ids = ["oppo_" + "".join(rng.choices(ALPHABET, k=43)) for _ in range(count)]
    close = FeedState(
        provider="close", checkpoint=datetime.now(UTC), known=dict.fromkeys(close_ids)
    )
    for name, state in (("getraze/reevo", reevo), ("close", close)):
        size = len(encode_cursor(state))
        per_record = size / count
        print(f"{name:14} {count:>7} records: {size:>9,} characters ({per_record:.1f} per record)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
