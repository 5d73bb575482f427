"""Shared pieces of the HTTP routes: strict body reading and parsing, bearer credentials, the
error body schema for the OpenAPI document."""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from fastapi import Depends, Request

from keel.canonical import parse_json
from keel.errors import AuthenticationError, InvalidRequestError, PayloadTooLargeError

__all__ = [
    "ERRORS",
    "OPERATOR_RESPONSES",
    "ErrorBody",
    "Reason",
    "bearer",
    "body_dependency",
    "parse_body",
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


class Reason(pydantic.BaseModel):
    """A body that only says why (a denial, a cancellation, a re-drive)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    reason: str = pydantic.Field(min_length=1, max_length=2000)


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
