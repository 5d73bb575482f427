"""Audit routes, for operator API keys: search records a page at a time, read one, export as JSON
lines (streamed), and verify the hash chains.

Reading needs ``viewer``; verifying needs ``operator`` (it reads the whole log) and a key for
every tenant. A key limited to one tenant reads its tenant's records only: another tenant's
record, or a filter naming another tenant, is "not found". Bodies are returned as stored: the
log keeps arguments and outcomes redacted. Answers are JSON with non-ASCII escaped (a body may
hold text that is not valid Unicode, such as a lone surrogate an agent sent).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response, StreamingResponse

from keel.app import App
from keel.audit import Cursor, EntryKind, Record, iter_query, query, record_at
from keel.errors import AuthorizationError, NotFoundError
from keel.identity import OperatorKey
from keel.server._http import ISO_TIME, NOT_FOUND, OPERATOR_RESPONSES, QueryText, utc_param
from keel.server.auth import OperatorAuth, tenant_filter

__all__ = ["audit_router", "json_lines"]

_LINES_PER_CHUNK = 200


class AuditRecord(pydantic.BaseModel):
    """One record as stored: its place in the chain, the indexed fields and the (redacted) body."""

    model_config = pydantic.ConfigDict(populate_by_name=True)

    chain: str
    seq: int
    ts: str = pydantic.Field(description="UTC, ISO-8601 with microseconds")
    kind: EntryKind
    tenant: str | None
    agent: str | None
    run_id: str | None
    step_id: str | None
    tool: str | None
    call_id: str | None
    decision: str | None
    rule_id: str | None
    body: dict[str, Any]
    schema_version: int = pydantic.Field(alias="schema", description="The body's schema version.")
    prev_hash: str
    hash: str


class RecordPage(pydantic.BaseModel):
    records: list[AuditRecord] = pydantic.Field(description="Newest first.")
    next_cursor: str | None = pydantic.Field(
        description="Pass as ``cursor`` for the next page; None on the last page."
    )


class ChainVerdict(pydantic.BaseModel):
    chain: str
    ok: bool
    records: int
    first_bad_seq: int | None = pydantic.Field(description="From here on it cannot be trusted.")
    problem: str | None
    problems: int


class Problem(pydantic.BaseModel):
    chain: str | None
    seq: int | None
    message: str


class Verification(pydantic.BaseModel):
    """The verification of every chain, its signed checkpoints and the anchor file."""

    ok: bool
    records_checked: int
    first_bad_chain: str | None
    first_bad_seq: int | None
    problem: str | None
    chains: list[ChainVerdict]
    problems: list[Problem] = pydantic.Field(description="Every finding (at most 1000).")
    checkpoints_checked: int
    signatures_checked: int
    notes: list[str]


Chain = Annotated[str, Path(max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Seq = Annotated[int, Path(ge=1, le=2**63 - 1)]


def audit_router(keel: App, auth: OperatorAuth) -> APIRouter:
    router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=OPERATOR_RESPONSES)
    viewer, operator = auth.needs("viewer"), auth.needs("operator")

    def filters(
        tenant: QueryText = None,
        agent: QueryText = None,
        run_id: QueryText = None,
        tool: QueryText = None,
        decision: QueryText = None,
        rule_id: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=200,
                pattern=r"^[^\x00-\x1f\x7f]+$",
                description="The id of the rule that decided (as in the record's rule_id).",
            ),
        ] = None,
        kind: Annotated[EntryKind | None, Query(description="decision, call or control")] = None,
        since: Annotated[
            _dt.datetime | None, ISO_TIME, Query(description="Recorded at or after (inclusive).")
        ] = None,
        until: Annotated[
            _dt.datetime | None, ISO_TIME, Query(description="Recorded before (exclusive).")
        ] = None,
        key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """The query filters of the request (a tenant key: its own tenant, or 404)."""
        return {
            "tenant": tenant_filter(key, tenant),
            "agent": agent,
            "run_id": run_id,
            "tool": tool,
            "decision": decision,
            "rule_id": rule_id,
            "kind": kind,
            "since": utc_param(since, "since"),
            "until": utc_param(until, "until"),
        }

    chosen_filters = Depends(filters)

    @router.get("/records", response_model=RecordPage, responses=NOT_FOUND)
    def records(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(min_length=1, max_length=1024)] = None,
        chosen: dict[str, Any] = chosen_filters,
    ) -> Response:
        """Records matching every filter, newest first, a page at a time."""
        after = None if cursor is None else Cursor.decode(cursor)
        found = query(keel.store, **chosen, limit=limit, after=after)
        more = Cursor.after(found[-1]).encode() if len(found) == limit else None
        return _json({"records": [r.to_dict() for r in found], "next_cursor": more})

    def one(chain: str, seq: int, key: OperatorKey) -> Response:
        found = record_at(keel.store, chain, seq)
        if found is None or not key.covers(found.entry.tenant):
            raise NotFoundError(f"no audit record {chain}/{seq}", code="record_not_found")
        return _json(found.to_dict())

    @router.get("/records/{chain}/{seq}", response_model=AuditRecord, responses=NOT_FOUND)
    def record(chain: Chain, seq: Seq, key: OperatorKey = viewer) -> Response:
        """One record, by its chain and sequence number. The chains of a partitioned log are
        named with a slash (``main/3``), written as is: ``/v1/audit/records/main/3/17``."""
        return one(chain, seq, key)

    @router.get("/records/{chain}/{partition}/{seq}", include_in_schema=False)
    def partitioned_record(
        chain: Chain, partition: Chain, seq: Seq, key: OperatorKey = viewer
    ) -> Response:
        return one(f"{chain}/{partition}", seq, key)

    @router.get(
        "/export",
        response_class=StreamingResponse,
        responses={
            **NOT_FOUND,
            200: {
                "description": "One record per line, newest first (JSON lines)",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
        },
    )
    def export(chosen: dict[str, Any] = chosen_filters) -> StreamingResponse:
        """Every record matching the filters, as JSON lines, streamed a page at a time."""
        chunks = json_lines(iter_query(keel.store, **chosen))
        first = next(chunks, b"")  # errors before the first byte still get their status
        return StreamingResponse(
            itertools.chain((first,), chunks), media_type="application/x-ndjson"
        )

    @router.post("/verify", response_model=Verification)
    def verify(key: OperatorKey = operator) -> Response:
        """Verify every chain, its signed checkpoints and the anchor file (reads the whole log)."""
        if key.tenant is not None:
            raise AuthorizationError(
                f"key {key.key_id} acts for tenant {key.tenant!r} only; verifying reads every "
                "tenant's records and needs a key for all tenants",
                code="all_tenants_required",
                context={"key_id": key.key_id, "tenant": key.tenant},
            )
        return _json(keel.verify_audit().to_dict())

    return router


def _json(data: Any) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")).encode("ascii"), media_type="application/json"
    )


def json_lines(records: Iterable[Record]) -> Iterator[bytes]:
    """Records as JSON lines (ASCII), a chunk of a few hundred lines at a time."""
    lines = (json.dumps(r.to_dict(), separators=(",", ":")) for r in records)
    while chunk := list(itertools.islice(lines, _LINES_PER_CHUNK)):
        yield ("\n".join(chunk) + "\n").encode("ascii")
