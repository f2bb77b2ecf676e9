"""Pure response handling: recorded answers through ``decipher_response``, no HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from close_opps import (
    APIError,
    AuthenticationError,
    DecodeError,
    EndpointNotFoundError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from close_opps.adapters.close import CloseDialect
from close_opps.adapters.getraze import GetrazeDialect
from close_opps.adapters.reevo import ReevoDialect
from close_opps.http import Dialect, Secret, decipher_response

FIXTURES = Path(__file__).parent / "sandbox" / "fixtures"
GETRAZE_CASES = json.loads((FIXTURES / "getraze-live-responses-2.json").read_text())["cases"]


def decipher(dialect: Dialect, status: int, body: Any, **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decipher_response(dialect, status, CIMultiDict(headers), raw, api_key=Secret("k_1"))


def raised(dialect: Dialect, status: int, body: Any, **headers: str) -> APIError:
    with pytest.raises(APIError) as info:
        decipher(dialect, status, body, **headers)
    return info.value


# ------------------------------------------------------------------------------- Getraze

EXPECTED_GETRAZE = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    429: RateLimitError,
    500: ServerError,
    400: InvalidRequestError,
}


@pytest.mark.parametrize("case", GETRAZE_CASES, ids=[c["case"] for c in GETRAZE_CASES])
def test_every_recorded_getraze_answer(case: dict[str, Any]) -> None:
    status, body = case["status"], case["body"]
    if status < 300:
        assert decipher(GetrazeDialect(), status, body) == json.loads(json.dumps(body))
        return
    error = raised(GetrazeDialect(), status, body)
    if status == 404:
        # Only the envelope's NOT_FOUND means "no such record"; a wrong route has no code.
        code = (body.get("error") or {}).get("code")
        assert type(error) is (NotFoundError if code == "NOT_FOUND" else EndpointNotFoundError)
    else:
        assert isinstance(error, EXPECTED_GETRAZE[status])
    assert error.message


def test_getraze_wrong_base_url_says_so() -> None:
    case = next(c for c in GETRAZE_CASES if c["case"].startswith("base URL without"))
    error = raised(GetrazeDialect(), 404, case["body"])
    assert isinstance(error, EndpointNotFoundError)
    assert not isinstance(error, NotFoundError)
    assert "base URL" in str(error)


def test_getraze_429_wait_comes_from_the_body() -> None:
    case = next(c for c in GETRAZE_CASES if c["status"] == 429)
    error = raised(GetrazeDialect(), 429, case["body"])
    assert isinstance(error, RateLimitError)
    assert error.retry_after == case["body"]["error"]["retry_after"]


def test_getraze_error_envelope_under_200() -> None:
    body = {"success": False, "error": {"code": "NOT_FOUND", "message": "gone"}}
    assert isinstance(raised(GetrazeDialect(), 200, body), NotFoundError)


# --------------------------------------------------------------------------------- Close


def test_close_missing_record_is_not_found() -> None:
    body = {"error": "Empty query: Opportunity matching query does not exist."}
    assert type(raised(CloseDialect(), 404, body)) is NotFoundError


@pytest.mark.parametrize("body", [b"<html><h1>Not Found</h1></html>", b"", {"detail": "x"}])
def test_close_route_404_is_endpoint_not_found(body: Any) -> None:
    assert type(raised(CloseDialect(), 404, body)) is EndpointNotFoundError


def test_close_validation_body() -> None:
    body = {"errors": [], "field-errors": {"lead_id": "This field is required."}}
    error = raised(CloseDialect(), 400, body)
    assert isinstance(error, InvalidRequestError)
    assert error.field_errors == {"lead_id": "This field is required."}
    assert "lead_id" in error.message


def test_close_skip_limit_is_read_into_the_error() -> None:
    body = {
        "error": "The skip you set is larger than the maximum skip for this resource "
        "(max_skip = 250000). Please refine your search query."
    }
    error = raised(CloseDialect(), 400, body)
    assert isinstance(error, InvalidRequestError)
    assert (error.offset_too_large, error.max_offset, error.max_page_size) == (True, 250000, None)


def test_close_skip_limit_without_a_number() -> None:
    error = raised(CloseDialect(), 400, {"error": "skip too large"})
    assert isinstance(error, InvalidRequestError)
    assert (error.offset_too_large, error.max_offset) == (True, None)


def test_close_page_size_limit_is_read_into_the_error() -> None:
    error = raised(CloseDialect(), 400, {"error": "_limit too large (max_limit = 200)"})
    assert isinstance(error, InvalidRequestError)
    assert (error.max_page_size, error.offset_too_large) == (200, False)


def test_close_other_400_names_no_limit() -> None:
    error = raised(CloseDialect(), 400, {"error": "Invalid date 2025-13-01"})
    assert isinstance(error, InvalidRequestError)
    assert (error.max_page_size, error.offset_too_large, error.cursor_invalid) == (
        None,
        False,
        False,
    )


# --------------------------------------------------------------------------------- Reevo


def test_reevo_record_not_found_forms() -> None:
    for body in (
        {"error": "record_not_found", "message": "Opportunity x not found."},
        {"detail": {"code": "record_not_found", "message": "No"}},
    ):
        error = raised(ReevoDialect(), 404, body)
        assert type(error) is NotFoundError
        assert error.code == "record_not_found"


def test_reevo_route_404_is_endpoint_not_found() -> None:
    assert type(raised(ReevoDialect(), 404, {"detail": "Not Found"})) is EndpointNotFoundError


def test_reevo_limit_maximum_from_the_validation_list() -> None:
    body = {"detail": [{"loc": ["body", "limit"], "msg": "too big", "ctx": {"le": 200}}]}
    error = raised(ReevoDialect(), 422, body)
    assert isinstance(error, InvalidRequestError)
    assert error.max_page_size == 200
    assert error.field_errors == {"limit": "too big"}


def test_reevo_cursor_error() -> None:
    error = raised(ReevoDialect(), 400, {"error": "invalid_cursor", "message": "expired"})
    assert isinstance(error, InvalidRequestError)
    assert error.cursor_invalid


# ---------------------------------------------------------------------------- any vendor


@pytest.mark.parametrize("dialect", [CloseDialect(), GetrazeDialect(), ReevoDialect()])
def test_a_2xx_body_that_is_not_json_is_a_decode_error(dialect: Dialect) -> None:
    with pytest.raises(DecodeError) as info:
        decipher(dialect, 200, b"<html>k_1</html>")
    assert "k_1" not in str(info.value)
    assert info.value.provider == dialect.provider


@pytest.mark.parametrize("dialect", [CloseDialect(), GetrazeDialect(), ReevoDialect()])
def test_error_messages_are_redacted(dialect: Dialect) -> None:
    error = raised(dialect, 401, b"bad key k_1")
    assert "k_1" not in str(error)
