"""Prometheus metrics of one App: its own registry, call counters, and state read at scrape time.

Counted as calls pass the gateway (``Metrics.record_call``, from the gateway observer; per
process — with several server workers each answers for its own calls):

- ``keel_calls_total{kind, tool, verdict, outcome}`` — every governed call; ``outcome`` is
  ``ok``, ``error`` (the target failed), ``refused`` (a guard stopped it: ``verdict`` says how),
  ``cached`` (a model answer from the response cache), ``replayed`` (an idempotency key's
  recorded outcome) or ``shadow``. Refused calls to an unknown target count as tool
  ``unresolved`` (a caller cannot grow the label set).
- ``keel_call_duration_seconds{kind, tool, verdict}`` — latency histogram, guards to record.
- ``keel_call_errors_total{kind, tool, code}`` — why calls were refused or failed.
- ``keel_call_cost_usd_total{kind, tool}``, ``keel_model_tokens_total{model, type}``.

Read from the store and in-process state on every scrape (:class:`StateCollector`; each source
is one cheap indexed query or an in-memory snapshot, and a failing source is skipped and flagged
in ``keel_scrape_error{source}`` instead of failing the scrape):

- ``keel_approvals_open{status}`` (pending, escalated) and
  ``keel_approvals_oldest_open_age_seconds{status}``;
- ``keel_runs{status}``;
- ``keel_spend_today_usd`` (settled since UTC midnight), ``keel_reservations_held`` and
  ``keel_reservations_held_usd`` (budget held by calls in flight);
- ``keel_breaker_state{target, state}`` (1 for the current state), ``keel_breaker_trips_total``;
- ``keel_model_cache_requests_total{result}`` (hit, miss, bypass) and
  ``keel_model_cache_hit_ratio``.

Nothing here is global: construct a ``Metrics`` per App; ``render()`` is the exposition text.
Thread-safe.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from keel.core import Clock, Cost
from keel.gateway import BreakerState
from keel.ledger import MICROS_PER_USD, Ledger
from keel.models import CacheStats
from keel.store import Store

__all__ = [
    "CONTENT_TYPE",
    "UNRESOLVED",
    "Metrics",
    "OpenApprovals",
    "StateCollector",
    "StateSources",
    "open_approvals",
]

log = logging.getLogger("keel.telemetry")

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: The ``tool`` label of a refused call whose target was never resolved.
UNRESOLVED: Final = "unresolved"
#: Seconds; from a cached policy decision to a slow model answer.
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_OPEN_APPROVALS: Final = ("pending", "escalated")
_BREAKER_STATES: Final = ("closed", "open", "half_open")


class Metrics:
    """The registry and the call counters of one App; see the module docstring."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._calls = Counter(
            "keel_calls",
            "Governed calls, by target, verdict and outcome.",
            ("kind", "tool", "verdict", "outcome"),
            registry=r,
        )
        self._latency = Histogram(
            "keel_call_duration_seconds",
            "Latency of governed calls, from the first guard to the committed record.",
            ("kind", "tool", "verdict"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._errors = Counter(
            "keel_call_errors",
            "Calls refused or failed, by error code.",
            ("kind", "tool", "code"),
            registry=r,
        )
        self._cost = Counter(
            "keel_call_cost_usd", "Cost of executed calls, in USD.", ("kind", "tool"), registry=r
        )
        self._tokens = Counter(
            "keel_model_tokens",
            "Tokens of executed model calls, by type (input, output).",
            ("model", "type"),
            registry=r,
        )
        # Label children by key: a dict hit instead of prometheus_client's locked lookup.
        self._children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}

    def record_call(
        self,
        kind: str,
        tool: str,
        verdict: str,
        outcome: str,
        seconds: float,
        cost: Cost,
        error_code: str | None,
    ) -> None:
        """Count one governed call (the gateway observer calls this once per call)."""
        key = (kind, tool, verdict, outcome)
        children = self._children.get(key)
        if children is None:
            children = (
                self._calls.labels(kind, tool, verdict, outcome),
                self._latency.labels(kind, tool, verdict),
            )
            self._children[key] = children
        calls, latency = children
        calls.inc()
        latency.observe(seconds)
        if error_code is not None:
            self._errors.labels(kind, tool, error_code).inc()
        if outcome == "ok":
            if cost.usd:
                self._cost.labels(kind, tool).inc(float(cost.usd))
            if kind == "model" and (cost.input_tokens or cost.output_tokens):
                self._tokens.labels(tool, "input").inc(cost.input_tokens)
                self._tokens.labels(tool, "output").inc(cost.output_tokens)

    def add_state(self, sources: StateSources) -> None:
        """Read ``sources`` on every scrape (see :class:`StateCollector`)."""
        self.registry.register(StateCollector(sources))

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class StateSources:
    """Where the scrape-time metrics come from; each is optional and called on every scrape.

    ``store``: the approvals table (open requests by status, oldest age). ``ledger``: spend
    today and held reservations. ``runs``: run counts by status. ``breakers``: circuit breaker
    snapshots. ``cache``: the model response cache's counters. They block on the store.
    """

    clock: Clock
    store: Store | None = None
    ledger: Ledger | None = None
    runs: Callable[[], Mapping[str, int]] | None = None
    breakers: Callable[[], Iterable[BreakerState]] | None = None
    cache: Callable[[], CacheStats] | None = None


class StateCollector(Collector):
    """A custom collector: metric families computed from :class:`StateSources` per scrape."""

    def __init__(self, sources: StateSources) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; the names are fixed and keel_-prefixed

    def collect(self) -> Iterator[Metric]:
        s = self._sources
        failed = GaugeMetricFamily(
            "keel_scrape_error",
            "1 when a source of state metrics failed this scrape.",
            labels=["source"],
        )
        parts: list[tuple[str, Callable[[], list[Metric]]]] = []
        if s.store is not None:
            parts.append(("approvals", self._approvals))
        if s.runs is not None:
            parts.append(("runs", self._runs))
        if s.ledger is not None:
            parts.append(("ledger", self._ledger))
        if s.breakers is not None:
            parts.append(("breakers", self._breakers))
        if s.cache is not None:
            parts.append(("cache", self._cache))
        for source, collect in parts:
            try:
                families = collect()
            except Exception:  # a scrape reports what it can
                log.warning("metrics: reading %s failed", source, exc_info=True)
                failed.add_metric([source], 1)
                continue
            failed.add_metric([source], 0)
            yield from families
        yield failed

    def _approvals(self) -> list[Metric]:
        store = self._sources.store
        assert store is not None
        now = self._sources.clock.now()
        found = open_approvals(store, now)
        count = GaugeMetricFamily(
            "keel_approvals_open", "Approval requests waiting for a decision.", labels=["status"]
        )
        age = GaugeMetricFamily(
            "keel_approvals_oldest_open_age_seconds",
            "Age of the oldest approval request waiting for a decision (0: none).",
            labels=["status"],
        )
        for status in _OPEN_APPROVALS:
            waiting = found[status]
            count.add_metric([status], waiting.count)
            age.add_metric([status], waiting.oldest_age_seconds(now))
        return [count, age]

    def _runs(self) -> list[Metric]:
        runs = self._sources.runs
        assert runs is not None
        family = GaugeMetricFamily("keel_runs", "Durable runs by status.", labels=["status"])
        for status, n in sorted(runs().items()):
            family.add_metric([status], n)
        return [family]

    def _ledger(self) -> list[Metric]:
        ledger = self._sources.ledger
        store = self._sources.store
        assert ledger is not None
        now = self._sources.clock.now().astimezone(_dt.UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        today = ledger.spend_by(since=midnight)
        spend = GaugeMetricFamily(
            "keel_spend_today_usd",
            "Settled spend since midnight UTC, in USD.",
            value=float(today.spent_usd),
        )
        families: list[Metric] = [spend]
        if store is not None:
            # Every hold, also those made before midnight: the partial index of held rows.
            row = store.read_one(
                "SELECT COUNT(*), COALESCE(SUM(amount_usd), 0) FROM ledger_reservations "
                "WHERE status = 'held'"
            )
            held, held_micros = (int(row[0]), int(row[1])) if row else (0, 0)
            families.append(
                GaugeMetricFamily(
                    "keel_reservations_held",
                    "Budget reservations held by calls in flight.",
                    value=held,
                )
            )
            families.append(
                GaugeMetricFamily(
                    "keel_reservations_held_usd",
                    "Budget held by calls in flight, in USD.",
                    value=held_micros / MICROS_PER_USD,
                )
            )
        return families

    def _breakers(self) -> list[Metric]:
        breakers = self._sources.breakers
        assert breakers is not None
        state = GaugeMetricFamily(
            "keel_breaker_state",
            "Circuit breaker state per target (1 for the current state).",
            labels=["target", "state"],
        )
        trips = CounterMetricFamily(
            "keel_breaker_trips", "Times a target's circuit opened.", labels=["target"]
        )
        for snapshot in breakers():
            for name in _BREAKER_STATES:
                state.add_metric([snapshot.target, name], 1 if snapshot.status == name else 0)
            trips.add_metric([snapshot.target], snapshot.trips)
        return [state, trips]

    def _cache(self) -> list[Metric]:
        cache = self._sources.cache
        assert cache is not None
        stats = cache()
        requests = CounterMetricFamily(
            "keel_model_cache_requests",
            "Model response cache lookups, by result.",
            labels=["result"],
        )
        requests.add_metric(["hit"], stats.hits)
        requests.add_metric(["miss"], stats.misses)
        requests.add_metric(["bypass"], stats.bypassed)
        looked = stats.hits + stats.misses
        ratio = GaugeMetricFamily(
            "keel_model_cache_hit_ratio",
            "Share of cacheable model requests answered from the cache (0 before any).",
            value=stats.hits / looked if looked else 0.0,
        )
        return [requests, ratio]


@dataclass(frozen=True, slots=True)
class OpenApprovals:
    """Approval requests of one ``status`` (pending or escalated) waiting for a decision: how
    many, since when the oldest, and how many by age (under an hour, an hour to a day, older)."""

    status: str
    count: int = 0
    oldest: _dt.datetime | None = None
    under_hour: int = 0
    under_day: int = 0
    over_day: int = 0

    def oldest_age_seconds(self, now: _dt.datetime) -> float:
        """How long the oldest has waited (0 when none waits)."""
        return max((now - self.oldest).total_seconds(), 0.0) if self.oldest else 0.0


def open_approvals(
    store: Store, now: _dt.datetime, *, tenant: str | None = None
) -> dict[str, OpenApprovals]:
    """The requests waiting for a decision, by status (both open statuses always present), of
    ``tenant`` only if given. One read; the (status, created_at) index answers it without
    touching decided requests."""
    hour, day = (_stamp(now - _dt.timedelta(hours=n)) for n in (1, 24))
    sql = (
        "SELECT status, COUNT(*), MIN(created_at), "
        "SUM(CASE WHEN created_at > ? THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN created_at > ? AND created_at <= ? THEN 1 ELSE 0 END) "
        "FROM approvals WHERE status IN ('pending', 'escalated')"
    )
    params: list[object] = [hour, day, hour]
    if tenant is not None:
        sql += " AND tenant = ?"
        params.append(tenant)
    with store.read() as tx:
        rows = tx.fetchall(sql + " GROUP BY status", params)
    found = {status: OpenApprovals(status) for status in _OPEN_APPROVALS}
    for status, n, oldest, under_hour, under_day in rows:
        count, hour_n, day_n = int(n), int(under_hour or 0), int(under_day or 0)
        found[str(status)] = OpenApprovals(
            str(status),
            count,
            _parse(oldest) if oldest else None,
            hour_n,
            day_n,
            count - hour_n - day_n,
        )
    return found


def _stamp(moment: _dt.datetime) -> str:
    """A time as the store keeps it: UTC ISO-8601 with microseconds (sorts as text)."""
    return moment.astimezone(_dt.UTC).isoformat(timespec="microseconds")


def _parse(text: object) -> _dt.datetime:
    moment = _dt.datetime.fromisoformat(str(text))
    return moment if moment.tzinfo else moment.replace(tzinfo=_dt.UTC)
