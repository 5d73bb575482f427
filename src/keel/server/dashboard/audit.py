"""The audit log: search (a page at a time, newest first), one record in full, export as JSON
lines, and the chains' integrity: the last signed checkpoints, and verification on request.

Searching, reading and exporting go through ``keel.audit`` exactly as ``/v1/audit`` does
(``query`` with a ``Cursor``, ``record_at``, ``iter_query``); a tenant key sees its tenant's
records only. Verifying reads the whole log, so it runs only when an operator with a key for
every tenant presses the button (``App.verify_audit``, as ``POST /v1/audit/verify``); the page
shows what is cheap to check on every load: the newest checkpoint of each chain, whether its
signature holds, whether the record it names still has the signed hash, and how many records
came after it.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, get_args

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from keel.audit import Cursor, EntryKind, Record, iter_query, query, record_at
from keel.audit.summary import last_checkpoints
from keel.errors import KeelError
from keel.identity import OperatorKey
from keel.server.audit import json_lines
from keel.server.auth import tenant_filter
from keel.server.dashboard.site import SECURITY_HEADERS, Form, Site, Who

__all__ = ["register"]

_HERE: Final = "/audit"
_PAGE: Final = 50
_MAX_TEXT: Final = 200
_MAX_PROBLEMS_SHOWN: Final = 100
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
KINDS: Final[tuple[str, ...]] = get_args(EntryKind)
#: Suggestions for the decision field (it takes any recorded decision or control action).
DECISIONS: Final = ("allow", "deny", "require_approval", "escalate", "engage", "release")
#: Text filters: query parameter (as in /v1/audit/records) → its label on the form.
TEXT_FILTERS: Final = {
    "run_id": "Run",
    "agent": "Agent",
    "tool": "Tool",
    "rule_id": "Rule",
    "decision": "Decision",
    "tenant": "Tenant",
}


class BadFilter(ValueError):
    """A search field the screen cannot use; the message says which and what is accepted."""


@dataclass(frozen=True, slots=True)
class Search:
    """The search a request asks for: ``filters`` for ``keel.audit.query`` (the tenant already
    limited to the key's), ``shown`` the form's values, ``cursor`` where the page starts."""

    filters: dict[str, Any]
    shown: dict[str, str]
    cursor: Cursor | None

    @classmethod
    def parse(cls, params: Mapping[str, str], key: OperatorKey) -> Search:
        """Raises ``BadFilter`` or ``KeelError`` (a cursor or tenant this key may not use)."""
        shown = {name: params.get(name, "").strip() for name in (*TEXT_FILTERS, "kind")}
        shown["since"], shown["until"] = params.get("since", ""), params.get("until", "")
        filters: dict[str, Any] = {}
        for name, label in TEXT_FILTERS.items():
            filters[name] = _text(shown[name], label)
        kind = shown["kind"] or None
        if kind is not None and kind not in KINDS:
            raise BadFilter(f"Kind must be one of {', '.join(KINDS)}.")
        filters["kind"] = kind
        since, until = _time(shown["since"], "From"), _time(shown["until"], "To")
        filters["since"], filters["until"] = since, until
        for name, moment in (("since", since), ("until", until)):
            if moment is not None:  # as a datetime-local field shows it: in UTC, no offset
                shown[name] = moment.replace(tzinfo=None).isoformat()
        filters["tenant"] = tenant_filter(key, filters["tenant"])
        raw_cursor = params.get("cursor")
        cursor = Cursor.decode(raw_cursor) if raw_cursor else None
        return cls(filters, shown, cursor)

    def link(self, **extra: str) -> str:
        """This search as a query string (for the "older" and export links)."""
        fields = {k: v for k, v in self.shown.items() if v}
        return urllib.parse.urlencode({**fields, **extra})


def register(site: Site) -> None:
    keel = site.keel

    def page(request: Request, who: Who, verification: dict[str, Any] | None = None) -> Response:
        key = who[1]
        search: Search | None = None
        problem: str | None = None
        rows: list[dict[str, Any]] = []
        older: str | None = None
        try:
            search = Search.parse(request.query_params, key)
            found = query(keel.store, **search.filters, limit=_PAGE + 1, after=search.cursor)
        except BadFilter as exc:
            problem = str(exc)
        except KeelError as exc:
            problem = f"Not searched: {exc.message}"
        else:
            if len(found) > _PAGE:
                found = found[:_PAGE]
                older = search.link(cursor=Cursor.after(found[-1]).encode())
            rows = [summary(r) for r in found]
        shown = search.shown if search else _echo(request.query_params)
        return site.render(
            "audit.html",
            request,
            who,
            search=shown,
            problem=problem,
            records=rows,
            older=older,
            paged=bool(request.query_params.get("cursor")),
            export=f"{_HERE}/export?{search.link()}" if search else None,
            newest=f"{_HERE}?{search.link()}" if search else _HERE,
            limit=_PAGE,
            kinds=KINDS,
            decisions=DECISIONS,
            integrity=_integrity(site, key),
            verification=verification,
            page="audit",
        )

    @site.screen(_HERE)
    def audit(request: Request, who: Who) -> Response:
        return page(request, who)

    @site.screen(f"{_HERE}/export")
    def export(request: Request, who: Who) -> Response:
        try:
            search = Search.parse(request.query_params, who[1])
            records = iter_query(keel.store, **search.filters)
            chunks = json_lines(records)
            first = next(chunks, b"")  # a failure before the first byte is still a message
        except BadFilter as exc:
            return site.back(_HERE, f"Not exported: {exc}", error=True)
        except KeelError as exc:
            return site.back(_HERE, f"Not exported: {exc.message}", error=True)
        stamp = keel.clock.now().astimezone(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="keel-audit-{stamp}.jsonl"',
        }
        return StreamingResponse(
            itertools.chain((first,), chunks), media_type="application/x-ndjson", headers=headers
        )

    @site.post(f"{_HERE}/verify")
    def verify(request: Request, who: Who, form: Form) -> Response:
        key = who[1]
        refusal = _why_not_verify(key)
        if refusal is not None:
            return site.back(_HERE, refusal, error=True)
        report = keel.verify_audit().to_dict()
        problems = report["problems"]
        report["problems_shown"] = [
            {**p, "link": record_link(p["chain"], p["seq"]) if p["chain"] and p["seq"] else None}
            for p in problems[:_MAX_PROBLEMS_SHOWN]
        ]
        report["problems_hidden"] = max(0, len(problems) - _MAX_PROBLEMS_SHOWN)
        report["checked_at"] = keel.clock.now().astimezone(_dt.UTC).isoformat(timespec="seconds")
        return page(request, who, verification=_safe_tree(report))

    def one(request: Request, who: Who, chain: str, seq: str) -> Response:
        key = who[1]
        number = int(seq) if seq.isascii() and seq.isdigit() and len(seq) < 20 else 0
        usable = len(chain) <= _MAX_TEXT and not _CONTROL.search(chain)
        found = record_at(keel.store, chain, number) if usable else None
        if found is None or not key.covers(found.entry.tenant):
            shown = _safe(_CONTROL.sub("?", f"{chain[:80]}/{seq[:20]}"))
            return site.back(_HERE, f"No audit record {shown}.", error=True)
        data = detail(found)
        if key.tenant is not None:  # its neighbours may be another tenant's
            data["previous"] = data["following"] = None
        elif record_at(keel.store, found.chain, found.seq + 1) is None:
            data["following"] = None
        return site.render("audit_record.html", request, who, record=data, page="audit")

    @site.screen(f"{_HERE}/{{chain}}/{{seq}}")
    def record(request: Request, who: Who, chain: str, seq: str) -> Response:
        return one(request, who, chain, seq)

    @site.screen(f"{_HERE}/{{chain}}/{{partition}}/{{seq}}")
    def partitioned_record(
        request: Request, who: Who, chain: str, partition: str, seq: str
    ) -> Response:
        return one(request, who, f"{chain}/{partition}", seq)


def record_link(chain: str, seq: int) -> str:
    """The dashboard's page of one record (a partitioned log's chains hold a slash)."""
    return f"{_HERE}/{urllib.parse.quote(chain, safe='/')}/{seq}"


def summary(record: Record) -> dict[str, Any]:
    """What a row of the results shows of ``record`` (strings made safe to print)."""
    data: dict[str, Any] = _safe_tree(record.to_dict())
    body = data["body"]
    principal = body.get("principal")
    cost = body.get("cost")
    latency = body.get("latency_ms")
    error = body.get("error")
    data.update(
        time=data["ts"][:19].replace("T", " "),
        on_behalf_of=_str(principal.get("on_behalf_of")) if isinstance(principal, dict) else None,
        cost_usd=_str(cost.get("usd")) if isinstance(cost, dict) else None,
        latency_ms=latency if isinstance(latency, int | float) else None,
        trace_id=_str(body.get("trace_id")),
        actor=_str(body.get("actor")) if record.entry.kind == "control" else None,
        note=_str(body.get("note") or body.get("reason"))
        if record.entry.kind == "control"
        else None,
        error_code=_str(error.get("code")) or "error" if isinstance(error, dict) else None,
        link=record_link(record.chain, record.seq),
        run_link=f"/runs/{urllib.parse.quote(record.entry.run_id, safe='')}"
        if record.entry.run_id
        else None,
    )
    return data


def detail(record: Record) -> dict[str, Any]:
    """Everything the record page shows: the summary, and the body's parts in full."""
    data = summary(record)
    body = data["body"]
    verdict = body.get("verdict")
    data.update(
        reason=_str(verdict.get("reason")) if isinstance(verdict, dict) else None,
        args_json=_pretty(body["args"]) if "args" in body else None,
        outcome_json=_pretty(body["outcome"]) if "outcome" in body else None,
        error_json=_pretty(body["error"]) if "error" in body else None,
        args_digest=_str(body.get("args_digest")),
        outcome_digest=_str(body.get("outcome_digest")),
        body_json=_pretty(body),
        previous=record_link(record.chain, record.seq - 1) if record.seq > 1 else None,
        following=record_link(record.chain, record.seq + 1),
    )
    return data


def _integrity(site: Site, key: OperatorKey) -> dict[str, Any]:
    """The cheap part of the chain's status, for the page: no full read of the log."""
    keel = site.keel
    if key.tenant is not None:
        return {"shown": False, "why_not_verify": _why_not_verify(key)}
    heads = keel.audit.heads()
    chains = []
    for checkpoint in last_checkpoints(keel.store):
        at = record_at(keel.store, checkpoint.chain, checkpoint.seq)
        head = heads.get(checkpoint.chain)
        chains.append(
            {
                "chain": checkpoint.chain,
                "seq": checkpoint.seq,
                "ts": checkpoint.ts[:19].replace("T", " "),
                "key_id": checkpoint.key_id,
                "signature_ok": checkpoint.check(keel.keys),
                "record_matches": at is not None and at.hash == checkpoint.hash,
                "after": (head[0] - checkpoint.seq) if head else None,
                "link": record_link(checkpoint.chain, checkpoint.seq),
            }
        )
    unsigned = sorted(set(heads) - {c["chain"] for c in chains})
    return {
        "shown": True,
        "chains": _safe_tree(chains),
        "unsigned": [{"chain": c, "records": heads[c][0]} for c in unsigned],
        "every": keel.config.audit_checkpoint_every,
        "anchored": bool(keel.config.audit_anchor_file),
        "why_not_verify": _why_not_verify(key),
    }


def _why_not_verify(key: OperatorKey) -> str | None:
    """Why this key may not verify the log (the same rule as POST /v1/audit/verify), or None."""
    if not key.allows("operator"):
        return f"Verifying needs the operator role or above; your key is {key.role}."
    if key.tenant is not None:
        return (
            f"Verifying reads every tenant's records; your key acts for tenant {key.tenant} "
            "only. Ask someone with a key for all tenants."
        )
    return None


def _text(value: str, label: str) -> str | None:
    if not value:
        return None
    if len(value) > _MAX_TEXT:
        raise BadFilter(f"{label} is longer than {_MAX_TEXT} characters.")
    if _CONTROL.search(value):
        raise BadFilter(f"{label} holds a control character; names never do.")
    return value


def _time(value: str, label: str) -> _dt.datetime | None:
    """A form time: ISO 8601 (as a datetime-local field sends it), UTC unless it says so."""
    text = value.strip()
    if not text:
        return None
    example = "2026-01-05T09:00 (UTC), or with an offset such as 2026-01-05T09:00+02:00"
    if len(text) > 40:
        raise BadFilter(f"{label} is not a time; use {example}.")
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{label} {_safe(text)!r} is not a time; use {example}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    try:
        return moment.astimezone(_dt.UTC)
    except OverflowError:
        raise BadFilter(f"{label} is outside the years 1 to 9999 in UTC.") from None


def _echo(params: Mapping[str, str]) -> dict[str, str]:
    """The form's values as sent, cut short, when they could not be used."""
    names = (*TEXT_FILTERS, "kind", "since", "until")
    return {name: _safe(params.get(name, "")[:_MAX_TEXT]) for name in names}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _pretty(value: Any) -> str:
    return _safe(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _safe(text: str) -> str:
    """``text`` printable as UTF-8: a lone surrogate (an agent may send one) shown escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_tree(value: Any) -> Any:
    if isinstance(value, str):
        return _safe(value)
    if isinstance(value, dict):
        return {_safe(str(k)): _safe_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe_tree(v) for v in value]
    return value
