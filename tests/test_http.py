"""The sans-I/O half of the transport: headers, waits, retry policy, URLs, secrets, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from close_opps import (
    APIError,
    AuthenticationError,
    EndpointNotFoundError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from close_opps.errors import APITimeoutError, error_class_for_status
from close_opps.http import (
    Dialect,
    Request,
    Secret,
    parse_rate_limit,
    parse_retry_after,
    path_segment,
    retry_wait,
    validate_base_url,
)

NOW = 1_800_000_000.0


def headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


class TestRateLimit:
    def test_close_structured_header(self) -> None:
        rl = parse_rate_limit(headers(RateLimit="limit=100, remaining=7, reset=0.5"), now=NOW)
        assert rl is not None
        assert (rl.limit, rl.remaining, rl.reset) == (100, 7, 0.5)
        assert rl.observed_at == datetime.fromtimestamp(NOW, UTC)
        assert rl.resets_at == datetime.fromtimestamp(NOW + 0.5, UTC)

    def test_close_legacy_headers_in_seconds(self) -> None:
        rl = parse_rate_limit(
            headers(x_rate_limit_limit="40", x_rate_limit_remaining="0", x_rate_limit_reset="2.5"),
            now=NOW,
        )
        assert rl is not None
        assert (rl.limit, rl.remaining, rl.reset) == (40, 0, 2.5)

    def test_getraze_reset_is_a_unix_time(self) -> None:
        rl = parse_rate_limit(
            CIMultiDict(
                {
                    "X-RateLimit-Limit": "1000",
                    "X-RateLimit-Remaining": "997",
                    "X-RateLimit-Reset": str(int(NOW) + 120),
                }
            ),
            now=NOW,
        )
        assert rl is not None
        assert (rl.limit, rl.remaining, rl.reset) == (1000, 997, 120.0)

    def test_none_without_headers(self) -> None:
        assert parse_rate_limit(headers(Content_Type="application/json"), now=NOW) is None

    def test_garbage_figures_are_ignored(self) -> None:
        rl = parse_rate_limit(headers(RateLimit="limit=abc, remaining=-3, reset=nan"), now=NOW)
        assert rl is None


class TestRetryAfter:
    def test_ratelimit_reset_wins_over_retry_after(self) -> None:
        # Close's rule: wait `reset` seconds, even when Retry-After says otherwise.
        h = headers(RateLimit="limit=100, remaining=0, reset=1.5", Retry_After="30")
        assert parse_retry_after(h, now=NOW) == 1.5

    def test_retry_after_seconds(self) -> None:
        assert parse_retry_after(headers(Retry_After="3"), now=NOW) == 3.0

    def test_retry_after_fractional(self) -> None:
        assert parse_retry_after(headers(Retry_After="0.25"), now=NOW) == 0.25

    def test_retry_after_http_date(self) -> None:
        when = datetime.fromtimestamp(NOW + 42, UTC)
        h = headers(Retry_After=format_datetime(when, usegmt=True))
        assert parse_retry_after(h, now=NOW) == pytest.approx(42.0)

    def test_retry_after_date_in_the_past_is_zero(self) -> None:
        when = datetime.fromtimestamp(NOW - 42, UTC)
        h = headers(Retry_After=format_datetime(when, usegmt=True))
        assert parse_retry_after(h, now=NOW) == 0.0

    def test_retry_after_ms(self) -> None:
        assert parse_retry_after(headers(Retry_After_Ms="1500"), now=NOW) == 1.5

    def test_legacy_reset(self) -> None:
        assert parse_retry_after(headers(x_rate_limit_reset="4"), now=NOW) == 4.0

    def test_unparseable_is_none(self) -> None:
        assert parse_retry_after(headers(Retry_After="soon"), now=NOW) is None
        assert parse_retry_after(headers(), now=NOW) is None


def api_error(cls: type[APIError], status: int, **kwargs: Any) -> APIError:
    return cls("boom", provider="close", status=status, **kwargs)


class TestRetryPolicy:
    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_server_errors_back_off(self, status: int) -> None:
        assert retry_wait(api_error(ServerError, status), max_wait=60) is True

    def test_501_is_not_retried(self) -> None:
        assert retry_wait(api_error(ServerError, 501), max_wait=60) is False

    def test_rate_limit_waits_what_the_server_asked(self) -> None:
        exc = api_error(RateLimitError, 429, retry_after=1.5)
        assert retry_wait(exc, max_wait=60) == 1.5

    def test_rate_limit_without_a_wait_backs_off(self) -> None:
        assert retry_wait(api_error(RateLimitError, 429), max_wait=60) is True

    @pytest.mark.parametrize("wait", [0.0, 0.2, 0.999])
    def test_a_short_server_wait_has_a_floor_and_jitter(self, wait: float) -> None:
        exc = api_error(RateLimitError, 429, retry_after=wait)
        assert retry_wait(exc, max_wait=60, jitter=lambda: 0.0) == 1.0
        assert retry_wait(exc, max_wait=60, jitter=lambda: 0.999) == pytest.approx(1.4995)
        assert 1.0 <= float(retry_wait(exc, max_wait=60)) < 1.5

    def test_a_wait_over_the_cap_is_not_slept(self) -> None:
        exc = api_error(RateLimitError, 429, retry_after=3419)
        assert retry_wait(exc, max_wait=60) is False

    def test_transport_errors_and_timeouts_are_retried(self) -> None:
        assert retry_wait(TransportError("reset", provider="close"), max_wait=60) is True
        assert retry_wait(APITimeoutError("slow", provider="close"), max_wait=60) is True

    @pytest.mark.parametrize(
        "cls,status",
        [
            (InvalidRequestError, 400),
            (AuthenticationError, 401),
            (PermissionDeniedError, 403),
            (NotFoundError, 404),
        ],
    )
    def test_client_errors_are_final(self, cls: type[APIError], status: int) -> None:
        assert retry_wait(api_error(cls, status), max_wait=60) is False

    def test_unrelated_exceptions_are_final(self) -> None:
        assert retry_wait(ValueError("bug"), max_wait=60) is False


class TestPathSegment:
    @pytest.mark.parametrize(
        "raw,encoded",
        [
            ("oppo_abc", "oppo_abc"),
            ("../../me", "..%2F..%2Fme"),
            ("a/b", "a%2Fb"),
            ("a?x=1", "a%3Fx%3D1"),
            ("a#b", "a%23b"),
            ("a b%", "a%20b%25"),
        ],
    )
    def test_one_segment(self, raw: str, encoded: str) -> None:
        assert path_segment(raw) == encoded

    @pytest.mark.parametrize("raw", ["", " ", ".", ".."])
    def test_refused(self, raw: str) -> None:
        with pytest.raises(ValueError, match="not a valid id"):
            path_segment(raw)

    def test_not_a_string(self) -> None:
        with pytest.raises(TypeError):
            path_segment(42)  # type: ignore[arg-type]

    def test_the_encoding_survives_into_the_url(self) -> None:
        url = Request(path=f"/opportunity/{path_segment('../../me?x=1#f')}/").url(
            "https://api.close.com/api/v1"
        )
        assert url.raw_path == "/api/v1/opportunity/..%2F..%2Fme%3Fx%3D1%23f/"
        assert url.query_string == ""
        assert url.fragment == ""


class TestBaseUrl:
    def test_https_is_kept_without_trailing_slash(self) -> None:
        assert validate_base_url("https://api.close.com/api/v1/") == "https://api.close.com/api/v1"

    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:8080/api", "http://localhost/x", "http://[::1]:9/x"]
    )
    def test_plain_http_on_loopback(self, url: str) -> None:
        assert validate_base_url(url) == url

    @pytest.mark.parametrize("url", ["http://api.close.com/api/v1", "http://10.0.0.1/api"])
    def test_plain_http_elsewhere_is_refused(self, url: str) -> None:
        with pytest.raises(ValueError, match="plain http"):
            validate_base_url(url)

    @pytest.mark.parametrize(
        "url", ["ftp://x/y", "api.close.com", "https://u:p@api.close.com", "https://h/?a=1"]
    )
    def test_other_bad_urls(self, url: str) -> None:
        with pytest.raises(ValueError):
            validate_base_url(url)


class TestSecret:
    def test_never_shows(self) -> None:
        secret = Secret("sk_live_123")
        assert "sk_live_123" not in repr(secret)
        assert "sk_live_123" not in str(secret)
        assert "sk_live_123" not in f"{secret}"
        assert secret.reveal() == "sk_live_123"

    def test_redact(self) -> None:
        assert Secret("abc123").redact("key abc123 rejected") == "key *** rejected"

    @pytest.mark.parametrize("value", ["", "   "])
    def test_empty_key_refused(self, value: str) -> None:
        with pytest.raises(ValueError, match="api_key"):
            Secret(value)


class TestDialectErrors:
    """The base dialect knows no vendor's body forms: status decides, text is the message."""

    dialect = Dialect()

    @pytest.mark.parametrize(
        "status,cls",
        [
            (400, InvalidRequestError),
            (401, AuthenticationError),
            (402, APIError),
            (403, PermissionDeniedError),
            (404, EndpointNotFoundError),  # not "no such record" unless the vendor says so
            (409, InvalidRequestError),
            (422, InvalidRequestError),
            (429, RateLimitError),
            (500, ServerError),
            (503, ServerError),
        ],
    )
    def test_status_mapping(self, status: int, cls: type[APIError]) -> None:
        error = self.dialect.error(status, headers(X_Request_Id="req_1"), "nope")
        assert type(error) is cls
        assert (error.status, error.request_id) == (status, "req_1")
        assert error.message.startswith("nope")
        assert "req_1" in str(error)

    def test_status_classes(self) -> None:
        assert error_class_for_status(404) is NotFoundError
        assert error_class_for_status(418) is APIError

    def test_vendor_forms_are_not_read_by_the_base(self) -> None:
        error = self.dialect.error(400, headers(), {"error": "nope"})
        assert error.message == "the server answered HTTP 400"

    def test_html_and_empty_bodies(self) -> None:
        html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
        assert "502 Bad Gateway" in self.dialect.error(502, headers(), html).message
        assert self.dialect.error(500, headers(), None).message == "the server answered HTTP 500"

    def test_rate_limit_error_carries_the_wait(self) -> None:
        error = self.dialect.error(429, headers(RateLimit="limit=1, remaining=0, reset=2"), None)
        assert isinstance(error, RateLimitError)
        assert error.retry_after == 2.0

    def test_key_is_scrubbed_from_messages(self) -> None:
        error = self.dialect.error(401, headers(), "key sk_9 is invalid", api_key=Secret("sk_9"))
        assert "sk_9" not in str(error)
        assert "sk_9" not in repr(error)
