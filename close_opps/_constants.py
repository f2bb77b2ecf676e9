"""The tunable numbers of the SDK, in one place."""

from __future__ import annotations

from close_opps._version import __version__

VERSION = __version__

USER_AGENT = f"close-opps/{VERSION}"

#: Seconds a whole request (connect, send, read) may take before it is abandoned.
DEFAULT_TIMEOUT = 30.0
#: Retries of a failed read (429, 500, 502, 503, 504, connection errors, timeouts).
DEFAULT_MAX_RETRIES = 4
#: A server-requested wait longer than this is not slept: RateLimitError is raised at once.
DEFAULT_MAX_RETRY_WAIT = 60.0
#: Exponential backoff when the server names no wait: first wait, cap, and added jitter.
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
BACKOFF_JITTER = 1.0
#: Records asked for per page, and pages fetched at once when the total is known.
DEFAULT_PAGE_SIZE = 100
DEFAULT_CONCURRENCY = 8
#: Same-origin redirects followed for one request.
MAX_REDIRECTS = 5
#: Bodies larger than this are parsed (and their records decoded) in a worker thread, so the
#: event loop stays responsive. Smaller ones are decoded on the loop: decoding holds the GIL
#: either way, and handing a 100-record page to a thread made a listing slower, not faster
#: (bench/list_side_by_side.py: 0.54 s against 0.43 s for 5,000 Close records).
OFFLOAD_BYTES = 2 * 1024 * 1024
#: Statuses that mean "try again later" for a read.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
#: A listing whose pages bring nothing new this many times in a row (and for at least this
#: many records) while the server says more follow is stopped with PaginationError.
NO_PROGRESS_PAGES = 3
NO_PROGRESS_RECORDS = 50
#: Re-reads allowed to find records that moved between pages (ties in the sort key): this
#: many per page of the window's first pass, plus a fixed allowance.
REREAD_BUDGET_FACTOR = 2
REREAD_BUDGET_MIN = 40
#: Whole passes read again when a listing still has fewer records than the server's total.
FULL_REREADS = 1
#: A wait the server names below this many seconds is raised to it (plus jitter): a wait
#: that ends just before the server's window turns would meet another 429.
MIN_SERVER_WAIT = 1.0
#: Response bodies nested deeper than this (objects and lists) are refused with DecodeError.
MAX_JSON_DEPTH = 64
#: JSON integers with more digits than this are refused with DecodeError (parsing a long
#: integer costs more than linear time).
MAX_JSON_INT_DIGITS = 100
