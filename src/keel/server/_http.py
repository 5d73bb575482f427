"""Shared pieces of the HTTP routes: strict body reading and parsing, bearer credentials, query
parameter types (text filters, times), the error body schema for the OpenAPI document."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Annotated, Any, Final, TypeVar

import pydantic
from fastapi import Depends, Query, Request

from keel.canonical import parse_json
from keel.errors import AuthenticationError, InvalidRequestError, PayloadTooLargeError

__all__ = [
    "ERRORS",
    "ISO_TIME",
    "NOT_FOUND",
    "OPERATOR_RESPONSES",
    "ErrorBody",
    "QueryText",
    "Reason",
    "bearer",
    "body_dependency",
    "documented_body",
    "parse_body",
    "utc_param",
]


class ErrorDetail(pydantic.BaseModel):
    code: str
    message: str
    retryable: bool
    context: dict[str, Any]


class ErrorBody(pydantic.BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (400, "malformed request"),
        (401, "missing or invalid agent token"),
        (403, "refused: policy, kill switch, budget or approval required"),
        (409, "the same idempotency key is in flight"),
        (413, "body too large"),
        (422, "the same idempotency key with a different body"),
        (429, "rate limited; see Retry-After"),
        (502, "the tool failed"),
        (503, "the store is unavailable"),
    )
}


#: What every operator route may answer besides 200: bad body, no key, wrong role, too large.
OPERATOR_RESPONSES: dict[int | str, dict[str, Any]] = {k: ERRORS[k] for k in (400, 401, 403, 413)}

#: For a route that names one object: no such object, or another tenant's (no existence oracle).
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such object (or not in the key's tenant)"}
}


class Reason(pydantic.BaseModel):
    """A body that only says why (a denial, a cancellation, a re-drive)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    reason: str = pydantic.Field(min_length=1, max_length=2000)


def documented_body(model: type[pydantic.BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (``body_dependency`` +
    ``parse_body``): the body's schema, so the OpenAPI document describes it."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def body_dependency(max_bytes: int) -> Any:
    """A FastAPI dependency that reads the body, refusing it early when it is too large."""

    async def read(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLargeError(
                f"the request body is {declared} bytes; the limit is {max_bytes} bytes",
                context={"size": int(declared), "limit": max_bytes},
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLargeError(
                    f"the request body is over the limit of {max_bytes} bytes",
                    context={"limit": max_bytes},
                )
            chunks.append(chunk)
        return b"".join(chunks)

    return Depends(read)


#: An optional text filter in a query string: 1 to 200 characters, no control characters (no name
#: holds them, and PostgreSQL refuses NUL in text).
QueryText = Annotated[
    str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]


_ISO_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _iso_time(value: object) -> object:
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("expected an ISO-8601 time such as 2026-01-05T09:00:00Z")
    return value


#: For a time query parameter (``Annotated[datetime | None, ISO_TIME, Query(...)]``): an
#: ISO-8601 text, not a number of seconds (which pydantic would also read as a time).
ISO_TIME: Final = pydantic.BeforeValidator(_iso_time)


def utc_param(value: _dt.datetime | None, name: str) -> _dt.datetime | None:
    """A time from a query parameter, in UTC; refused when it has no UTC offset or leaves the
    calendar once converted (year 1 at +01:00)."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequestError(
            f"{name} needs a UTC offset, as in 2026-01-05T09:00:00Z", context={"field": name}
        )
    try:
        return value.astimezone(_dt.UTC)
    except OverflowError:
        raise InvalidRequestError(
            f"{name} is outside the years 1 to 9999 in UTC", context={"field": name}
        ) from None


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "this endpoint needs an agent token: Authorization: Bearer <token>",
            code="token_missing",
        )
    return token.strip()


M = TypeVar("M", bound=pydantic.BaseModel)


def parse_body(raw: bytes, model: type[M], max_bytes: int, depth: int) -> M:
    if not raw:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    data = parse_json(raw, max_bytes=max_bytes, max_depth=depth, what="request body")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()[:10]
        )
        raise InvalidRequestError(
            f"the request body is not valid: {problems}",
            context={"fields": [".".join(str(p) for p in e["loc"]) for e in exc.errors()[:10]]},
        ) from None
