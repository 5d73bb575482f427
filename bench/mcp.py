"""MCP gateway: the same SDK client calling an upstream MCP server directly and through Keel.

    python bench/mcp.py                     # SQLite store (≈ 45 s on 2 cores)
    python bench/mcp.py --store-url postgresql://127.0.0.1:5432/test   # a fresh schema, dropped
    python bench/mcp.py --calls 2000 --warmup 100 --sessions 8 --throughput-calls 2000
    python bench/mcp.py --no-breakdown      # skip the in-process breakdown

One run, one machine, loopback only. Three processes: this one (the client), the upstream
fixture (``tests/mcp_gateway/fixture_server.py --http PORT``, the official SDK's ``MCPServer``
over streamable HTTP) and ``keel serve`` (uvicorn, ``--workers`` processes, default 1) whose
``/mcp`` forwards to the same fixture, configured as ``mcp.upstreams.fixture`` with
``effect: read``. The client is the official SDK's ``mcp.Client`` over
``streamable_http_client``, with an ``httpx2.AsyncClient`` that carries ``Authorization: Bearer
<agent token>`` for Keel (scope ``mcp:fixture``; the policy allows ``fixture.*``). Each call is
``tools/call lookup_order`` (direct) or ``tools/call fixture.lookup_order`` (Keel) with a fresh
``order_id``: a cheap read, so the figures are the protocol and the gateway, not the tool.

- **Latency**: sequential calls on one open session per target, ``--warmup`` untimed calls each,
  then ``--calls`` timed ones, in ``--rounds`` blocks that alternate between the targets (so a
  slow minute on a shared machine hits both). p50 / p90 / p99 / max, and the CPU time per call
  of each process (client, Keel, upstream) read from ``/proc``.
- **Throughput**: ``--sessions`` concurrent sessions (each its own HTTP client) in this process,
  a few warm-up calls each, then ``--throughput-calls`` calls in all, each session sending its next
  call as soon as the last one is answered (a closed loop). Calls/s over the timed phase.

Target: **added p50 = Keel p50 − direct p50 ≤ 3 ms** (printed MET / NOT MET; never asserted).

``--breakdown`` (on by default) then times the layers in one process, without HTTP in front
(``bench/_mcp_breakdown.py``): the upstream hop Keel makes (the SDK client on the gateway's
loop thread), ``keel.acall`` of ``fixture.lookup_order`` (the whole guard chain plus that hop),
``keel.acall`` of a local async tool (the guard chain alone), and the front door's own checks
(token verification, JSON-RPC message check). With Keel's CPU per call over HTTP, that says
where the added time goes.

Checks (the exit status is non-zero only when one fails): every call answered, not ``isError``,
with the order asked for; the upstream's ``calls.log`` holds exactly one line per call made
(direct and through Keel: no cache, no retry); Keel wrote one ``call`` audit record per call
through it; the audit chain verifies.

Store: a SQLite file in a temporary folder (Keel's default, WAL), or ``--store-url`` for
PostgreSQL: a fresh schema ``bench_mcp_<random>`` in that database, dropped at the end. Every
subprocess is stopped at the end, every wait is bounded, and ``--max-seconds`` bounds each
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.machinery
import importlib.util
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _procs import cpu_seconds, descendants, free_port

HERE = Path(__file__).resolve().parent


def _without_here(path: list[str]) -> list[str]:
    return [p for p in path if Path(p or ".").resolve() != HERE]


# This file is named like the SDK. A script run as ``python bench/<name>.py`` has this folder
# first on sys.path, so its ``import mcp`` (or Keel's, e.g. ``create_app`` -> ``keel.mcp.http``)
# finds this file instead of the SDK. Imported that way, this module puts the real SDK in its
# place in sys.modules (the import system then hands that to the importer); run as a script, it
# drops its folder from sys.path before anything imports the SDK.
if __name__ == "mcp":
    _spec = importlib.machinery.PathFinder.find_spec("mcp", _without_here(sys.path))
    if _spec is None or _spec.loader is None:
        raise ImportError("the mcp SDK is not installed (and bench/mcp.py is not it)")
    _sdk = importlib.util.module_from_spec(_spec)
    sys.modules["mcp"] = _sdk
    _spec.loader.exec_module(_sdk)
elif __name__ == "__main__":
    sys.path[:] = _without_here(sys.path)

ROOT = HERE.parent
FIXTURE = ROOT / "tests" / "mcp_gateway" / "fixture_server.py"
ADDED_P50_TARGET_MS = 3.0
AGENT = "bench-mcp"
TENANT = "acme"
SCOPE = "mcp:fixture"
DIRECT_TOOL = "lookup_order"
KEEL_TOOL = "fixture.lookup_order"

POLICY = """\
policy: mcp-bench
version: 1
scope: {tenant: acme}
tools:
  allow: ["fixture.*", "bench.*"]   # bench.*: the breakdown's local tool
"""

KEEL_CONFIG = """\
store_url: {store_url}
home: home
policy_paths: [policy.yaml]
egress_allow: ["127.0.0.1"]
mcp:
  upstreams:
    fixture:
      url: http://127.0.0.1:{port}/mcp
      effect: read
"""


def log(message: str = "") -> None:
    print(message, flush=True)


# -- processes ----------------------------------------------------------------------------------


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Server:
    """A subprocess in its own process group; stopped (SIGTERM, then SIGKILL) by ``stop``."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])

    def wait_ready(self, url: str, timeout: float, *, any_status: bool = False) -> None:
        """Return once ``url`` answers (200, or any HTTP status with ``any_status``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError:
                if any_status:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not answer {url} within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


# -- the store ----------------------------------------------------------------------------------


@contextlib.contextmanager
def store(url: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    """``(store URL for Keel, description)``: a SQLite file in ``tmp`` by default; for a
    PostgreSQL URL, a fresh schema in that database, dropped on the way out."""
    if url is None:
        yield f"sqlite:///{tmp / 'keel' / 'keel.db'}", "SQLite (WAL file, Keel's default)"
        return
    if not url.startswith(("postgresql://", "postgres://")):
        yield url, f"as given ({url.split(':', 1)[0]})"
        return
    import psycopg

    schema = f"bench_mcp_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        version = admin.execute("SHOW server_version").fetchone()
        admin.execute(f'CREATE SCHEMA "{schema}"')
    options = quote(f"-c search_path={schema}")
    scoped = f"{url}{'&' if '?' in url else '?'}options={options}"
    try:
        release = str(version[0]).split()[0] if version else "?"
        yield scoped, f"PostgreSQL {release} (fresh schema {schema})"
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        log(f"dropped schema {schema}")


def prepare_keel(folder: Path, store_url: str, fixture_port: int) -> str:
    """Write Keel's config and policy into ``folder``; migrate the store; mint the agent token."""
    from keel import App
    from keel.configfile import load_config

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(POLICY)
    config = KEEL_CONFIG.format(store_url=json.dumps(store_url), port=fixture_port)
    (folder / "keel.yaml").write_text(config)
    with App(load_config(folder / "keel.yaml")) as keel:  # relative paths: the file's folder
        return keel.mint_token(AGENT, tenant=TENANT, scopes=[SCOPE], ttl=dt.timedelta(minutes=15))


# -- the client ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def session(url: str, token: str | None) -> AsyncIterator[Any]:
    """One SDK client session over streamable HTTP (with the agent token, for Keel)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)  # seconds
    elapsed: float = 0.0  # seconds of the timed phase (throughput)
    client_cpu: float = 0.0
    keel_cpu: float = 0.0
    upstream_cpu: float = 0.0

    def ms(self, q: float) -> float:
        return pct(sorted(self.latencies), q) * 1e3

    @property
    def count(self) -> int:
        return len(self.latencies)

    def per_call_ms(self, seconds: float) -> float:
        return seconds / self.count * 1e3 if self.count else float("nan")


@dataclass
class Target:
    name: str
    url: str
    tool: str
    token: str | None
    calls_made: int = 0  # every call sent, warm-up included
    errors: list[str] = field(default_factory=list)
    latency: Figures = field(default_factory=Figures)
    throughput: Figures = field(default_factory=Figures)


class Bench:
    def __init__(self, args: argparse.Namespace, keel: Server, upstream: Server) -> None:
        self.args = args
        self.keel = keel
        self.upstream = upstream
        self.keel_pids = keel.pids()
        self.upstream_pids = upstream.pids()
        self.problems: list[str] = []

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)
            log(f"  CHECK FAILED: {problem}")

    def cpu(self) -> tuple[float, float, float]:
        return own_cpu(), cpu_seconds(self.keel_pids), cpu_seconds(self.upstream_pids)

    def charge(self, figures: Figures, before: tuple[float, float, float]) -> None:
        after = self.cpu()
        figures.client_cpu += after[0] - before[0]
        figures.keel_cpu += after[1] - before[1]
        figures.upstream_cpu += after[2] - before[2]

    async def call(self, client: Any, target: Target) -> float | None:
        """One ``tools/call``; its latency in seconds, or None (the error is kept)."""
        number = target.calls_made
        target.calls_made += 1
        order = f"ORD-{number}"
        began = time.perf_counter()
        try:
            result = await client.call_tool(
                target.tool, {"order_id": order}, read_timeout_seconds=30
            )
        except Exception as exc:  # the SDK raises many kinds; counted, reported
            target.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return None
        elapsed = time.perf_counter() - began
        value = result.structured_content or {}
        if result.is_error or value.get("order_id") != order:
            target.errors.append(f"unexpected result: {result.model_dump(exclude_none=True)}"[:300])
            return None
        return elapsed

    def too_many_errors(self, target: Target) -> bool:
        return len(target.errors) > self.args.max_errors

    async def latency(self, targets: list[Target]) -> None:
        """Sequential calls on one session per target, in alternating blocks."""
        args = self.args
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(session(t.url, t.token)) for t in targets]
            for client, target in zip(clients, targets, strict=True):
                for _ in range(args.warmup):
                    await self.call(client, target)
            rounds = max(1, min(args.rounds, args.calls))
            for index in range(rounds):
                share = args.calls // rounds + (1 if index < args.calls % rounds else 0)
                order = list(zip(clients, targets, strict=True))
                if index % 2:
                    order.reverse()
                for client, target in order:
                    if self.too_many_errors(target):
                        continue
                    before = self.cpu()
                    for _ in range(share):
                        elapsed = await self.call(client, target)
                        if elapsed is not None:
                            target.latency.latencies.append(elapsed)
                    self.charge(target.latency, before)

    async def throughput(self, target: Target) -> None:
        """``--sessions`` sessions in a closed loop, ``--throughput-calls`` calls in all.

        Each session lives in its own task (the SDK's sessions must be closed by the task that
        opened them): it opens, warms up, waits for the others, then calls until none are left.
        The clock runs from the common start until the last call is answered."""
        args = self.args
        figures = target.throughput
        left = [args.throughput_calls]
        ready, finished = [0], [0]
        all_ready, go = asyncio.Event(), asyncio.Event()
        marks: dict[str, Any] = {}

        def arrived() -> None:
            ready[0] += 1
            if ready[0] == args.sessions:
                all_ready.set()

        def done() -> None:
            finished[0] += 1
            if finished[0] == args.sessions and "cpu" in marks:
                marks["end"] = time.perf_counter()
                self.charge(figures, marks["cpu"])

        async def worker() -> None:
            here = {"arrived": False, "done": False}
            try:
                async with session(target.url, target.token) as client:
                    for _ in range(args.session_warmup):
                        await self.call(client, target)
                    here["arrived"] = True
                    arrived()
                    await go.wait()
                    while left[0] > 0 and not self.too_many_errors(target):
                        left[0] -= 1
                        elapsed = await self.call(client, target)
                        if elapsed is not None:
                            figures.latencies.append(elapsed)
                    here["done"] = True
                    done()
            except Exception as exc:  # a session that fails: reported, the others go on
                target.errors.append(f"session: {type(exc).__name__}: {exc}"[:300])
            finally:
                if not here["arrived"]:
                    arrived()
                if not here["done"]:
                    done()

        tasks = [asyncio.create_task(worker()) for _ in range(args.sessions)]
        try:
            await all_ready.wait()
            marks["cpu"] = self.cpu()
            began = time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            figures.elapsed = marks.get("end", time.perf_counter()) - began
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, targets: list[Target]) -> None:
        limit = self.args.max_seconds
        log(
            f"\n== latency: {self.args.warmup} warm-up + {self.args.calls} timed sequential "
            f"calls per target, one session each, {self.args.rounds} alternating blocks =="
        )
        began = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                await self.latency(targets)
        except TimeoutError:
            self.check(False, f"the latency measurement took over {limit:.0f} s: stopped")
        log(f"  ({time.perf_counter() - began:.1f} s)")
        for target in targets:
            log(
                f"\n== throughput: {target.name}, {self.args.sessions} sessions, "
                f"{self.args.throughput_calls} calls =="
            )
            began = time.perf_counter()
            try:
                async with asyncio.timeout(limit):
                    await self.throughput(target)
            except TimeoutError:
                self.check(False, f"{target.name} throughput took over {limit:.0f} s: stopped")
            log(f"  ({time.perf_counter() - began:.1f} s)")


# -- checks and report --------------------------------------------------------------------------


def check_upstream_log(bench: Bench, state: Path, expected: int) -> int:
    path = state / "calls.log"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    got = sum(1 for line in lines if line.startswith("lookup_order "))
    bench.check(
        got == expected,
        f"the upstream logged {got} lookup_order calls for {expected} calls made "
        "(a cache, a retry or a lost call would change this)",
    )
    return got


def check_keel_store(bench: Bench, folder: Path, keel_calls: int) -> str:
    """One ``call`` audit record per call through Keel; the audit chain verifies."""
    from keel import App
    from keel.configfile import load_config

    with App(load_config(folder / "keel.yaml")) as keel:
        row = keel.store.read_one(
            "SELECT count(*) FROM audit_records WHERE kind = 'call' AND tool = ?", (KEEL_TOOL,)
        )
        report = keel.verify_audit()
    records = int(row[0]) if row else 0
    bench.check(records == keel_calls, f"Keel: {records} call audit records for {keel_calls} calls")
    bench.check(report.ok, f"Keel: audit verification failed: {report.summary()}")
    return f"{records:,} call audit records for {keel_calls:,} calls; chain: {report.summary()}"


def run_breakdown(args: argparse.Namespace, folder: Path) -> dict[str, Any] | None:
    argv = [sys.executable, "-m", "bench._mcp_breakdown", "--config", str(folder / "keel.yaml")]
    argv += ["--calls", str(args.breakdown_calls), "--warmup", str(args.warmup)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(
            argv,
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.max_seconds,
        )
    except subprocess.TimeoutExpired:
        log(f"breakdown: stopped after {args.max_seconds:.0f} s")
        return None
    if done.returncode != 0:
        log(f"breakdown failed:\n{done.stderr.strip()[-1500:]}")
        return None
    if done.stderr.strip():
        log(f"breakdown stderr:\n{done.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def fmt(value: float, digits: int = 2) -> str:
    return "—" if value != value else f"{value:,.{digits}f}"  # NaN -> dash


def report(bench: Bench, targets: list[Target]) -> float:
    direct, keel = targets
    log("\n== results ==")
    log(
        "\nlatency, sequential calls on one session (ms; CPU = CPU time per call of each "
        "process, from /proc):"
    )
    log(
        f"  {'target':44} {'calls':>6} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} "
        f"{'client CPU':>10} {'Keel CPU':>9} {'upstream CPU':>12}"
    )
    for target in targets:
        f = target.latency
        log(
            f"  {target.name:44} {f.count:6d} {fmt(f.ms(0.5)):>7} {fmt(f.ms(0.9)):>7} "
            f"{fmt(f.ms(0.99)):>7} {fmt(f.ms(1.0)):>7} {fmt(f.per_call_ms(f.client_cpu)):>10} "
            f"{fmt(f.per_call_ms(f.keel_cpu)):>9} {fmt(f.per_call_ms(f.upstream_cpu)):>12}"
        )
    log(f"\nthroughput, {bench.args.sessions} concurrent sessions, closed loop:")
    log(
        f"  {'target':44} {'calls':>6} {'calls/s':>8} {'p50':>7} {'p99':>7} "
        f"{'client CPU':>10} {'Keel CPU':>9} {'upstream CPU':>12}"
    )
    for target in targets:
        f = target.throughput
        rate = f.count / f.elapsed if f.elapsed > 0 else float("nan")
        log(
            f"  {target.name:44} {f.count:6d} {fmt(rate, 1):>8} {fmt(f.ms(0.5)):>7} "
            f"{fmt(f.ms(0.99)):>7} {fmt(f.per_call_ms(f.client_cpu)):>10} "
            f"{fmt(f.per_call_ms(f.keel_cpu)):>9} {fmt(f.per_call_ms(f.upstream_cpu)):>12}"
        )
    added = keel.latency.ms(0.5) - direct.latency.ms(0.5)
    ratio = (
        keel.throughput.count / keel.throughput.elapsed
        if keel.throughput.elapsed > 0
        else float("nan")
    ) / (
        direct.throughput.count / direct.throughput.elapsed
        if direct.throughput.elapsed > 0
        else float("nan")
    )
    verdict = "MET" if added <= ADDED_P50_TARGET_MS else "NOT MET"
    log(
        f"\nadded p50 = Keel p50 − direct p50 = {fmt(keel.latency.ms(0.5))} − "
        f"{fmt(direct.latency.ms(0.5))} = {fmt(added)} ms; target ≤ {ADDED_P50_TARGET_MS:g} ms: "
        f"{verdict}"
    )
    log(f"Keel's throughput = {fmt(ratio)} × direct at {bench.args.sessions} sessions")
    return added


def report_breakdown(breakdown: dict[str, Any], keel: Target, direct: Target) -> None:
    log(
        "\nbreakdown, in one process without HTTP in front "
        f"({breakdown['calls']} calls each after {breakdown['warmup']} warm-up; ms):"
    )
    log(f"  {'layer':70} {'p50':>7} {'p90':>7} {'p99':>7} {'CPU':>7}")
    for row in breakdown["rows"]:
        log(
            f"  {row['name']:70} {fmt(row['p50_ms'], 3):>7} {fmt(row['p90_ms'], 3):>7} "
            f"{fmt(row['p99_ms'], 3):>7} {fmt(row['cpu_ms'], 3):>7}"
        )
    rows = {row["key"]: row["cpu_ms"] for row in breakdown["rows"]}
    k, d = keel.latency, direct.latency
    keel_cpu = k.per_call_ms(k.keel_cpu)
    rest = keel_cpu - rows["handler_call"] - rows["handler_list"]
    lines = [
        ("Keel's server process, whole call (from /proc, latency run)", keel_cpu),
        ("  tools/call handler (in process)", rows["handler_call"]),
        (
            "    upstream hop: SDK client → fixture + loop-thread hand-off",
            rows["hop_from_other_loop"],
        ),
        (
            "    guard chain (keel.acall − hop)",
            rows["acall_upstream"] - rows["hop_from_other_loop"],
        ),
        (
            "    CallToolResult from the outcome, dumped",
            rows["handler_call"] - rows["acall_upstream"],
        ),
        (
            "  tools/list handler, run by the SDK for each tools/call"
            if not breakdown.get("input_schema_hook")
            else "  (tools/list handler: not run per call)",
            rows["handler_list"] if not breakdown.get("input_schema_hook") else 0.0,
        ),
        ("  rest: uvicorn, FastAPI/Starlette, /mcp checks, SDK request path, SSE", rest),
        (
            "for scale: the fixture upstream (an SDK server), per call",
            d.per_call_ms(d.upstream_cpu),
        ),
        ("for scale: the SDK client, per call", d.per_call_ms(d.client_cpu)),
    ]
    log("\nwhere Keel's CPU time per call goes (ms; in-process rows from the breakdown):")
    for label, value in lines:
        log(f"  {label:70} {fmt(value):>6}")
    log(
        "  sum of CPU per call of client + Keel + upstream: "
        f"{fmt(k.per_call_ms(k.client_cpu + k.keel_cpu + k.upstream_cpu))} (Keel p50 "
        f"{fmt(k.ms(0.5))}); client + upstream: "
        f"{fmt(d.per_call_ms(d.client_cpu + d.upstream_cpu))} (direct p50 {fmt(d.ms(0.5))})"
    )


def machine_note(load_before: tuple[float, ...], ticks_before: list[int]) -> str:
    with open("/proc/loadavg") as f:
        load_after = tuple(float(x) for x in f.read().split()[:3])
    ticks = proc_stat_ticks()
    delta = [b - a for a, b in zip(ticks_before, ticks, strict=False)]
    total = sum(delta) or 1
    steal = delta[7] / total * 100 if len(delta) > 7 else float("nan")
    busy = (total - delta[3] - (delta[4] if len(delta) > 4 else 0)) / total * 100
    return (
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after, CPU busy {busy:.0f} %, "
        f"steal {steal:.1f} % during the run"
    )


def proc_stat_ticks() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def versions() -> str:
    import importlib.metadata as md

    parts = []
    for name in ("mcp", "httpx2", "uvicorn", "keel"):
        with contextlib.suppress(md.PackageNotFoundError):
            parts.append(f"{name} {md.version(name)}")
    return ", ".join(parts)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="timed sequential calls per target")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls first, per target")
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks of the latency")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (throughput)")
    parser.add_argument(
        "--throughput-calls", type=int, default=1000, help="timed calls in all, per target"
    )
    parser.add_argument(
        "--session-warmup", type=int, default=5, help="untimed calls per throughput session"
    )
    parser.add_argument(
        "--store-url",
        default=None,
        help="Keel's store: default a SQLite file; a postgresql:// URL gets a fresh schema, "
        "dropped afterwards (e.g. postgresql://127.0.0.1:5432/test)",
    )
    parser.add_argument("--workers", type=int, default=1, help="keel serve --workers")
    parser.add_argument(
        "--no-breakdown", dest="breakdown", action="store_false", help="skip the breakdown"
    )
    parser.add_argument("--breakdown-calls", type=int, default=300, help="calls per layer")
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="time limit of each measurement"
    )
    parser.add_argument(
        "--max-errors", type=int, default=20, help="stop a target after this many failed calls"
    )
    args = parser.parse_args()
    if not (
        0 < args.calls <= 1_000_000
        and 0 <= args.warmup <= 100_000
        and 1 <= args.sessions <= 256
        and 0 < args.throughput_calls <= 1_000_000
        and 1 <= args.workers <= 16
        and 0 < args.breakdown_calls <= 100_000
    ):
        sys.exit("out of range: calls 1-1e6, warmup 0-1e5, sessions 1-256, workers 1-16")

    began = time.perf_counter()
    with open("/proc/loadavg") as f:
        load_before = tuple(float(x) for x in f.read().split()[:3])
    ticks_before = proc_stat_ticks()
    with tempfile.TemporaryDirectory(prefix="keel-bench-mcp-") as name:
        tmp = Path(name)
        state = tmp / "fixture"
        state.mkdir()
        fixture_port, keel_port = free_port(), free_port()
        upstream = Server(
            "fixture upstream",
            [sys.executable, str(FIXTURE), "--http", str(fixture_port)],
            {**os.environ, "FIXTURE_STATE": str(state)},
            tmp,
            tmp / "fixture.log",
        )
        try:
            upstream.wait_ready(f"http://127.0.0.1:{fixture_port}/mcp", 60, any_status=True)
            with store(args.store_url, tmp) as (store_url, store_text):
                folder = tmp / "keel"
                token = prepare_keel(folder, store_url, fixture_port)
                log(f"Keel store: {store_text}")
                log(f"Keel: keel serve --workers {args.workers}; {versions()}")
                argv = [sys.executable, "-m", "keel.cli", "serve", "-c", str(folder / "keel.yaml")]
                argv += ["--port", str(keel_port), "--workers", str(args.workers)]
                argv += ["--log-level", "warning"]
                keel = Server("keel serve", argv, dict(os.environ), folder, folder / "serve.log")
                try:
                    keel.wait_ready(f"http://127.0.0.1:{keel_port}/readyz", 90)
                    if args.workers > 1:
                        time.sleep(2.0)  # let every worker finish starting
                    bench = Bench(args, keel, upstream)
                    targets = [
                        Target(
                            "direct: client → upstream",
                            f"http://127.0.0.1:{fixture_port}/mcp",
                            DIRECT_TOOL,
                            None,
                        ),
                        Target(
                            "keel: client → Keel /mcp → upstream",
                            f"http://127.0.0.1:{keel_port}/mcp",
                            KEEL_TOOL,
                            token,
                        ),
                    ]
                    asyncio.run(bench.run(targets))
                finally:
                    keel.stop()
                server_log = keel.tail(20)
                for target in targets:
                    bench.check(
                        not target.errors,
                        f"{target.name}: {len(target.errors)} failed calls, e.g. "
                        f"{target.errors[:2]}",
                    )
                made = sum(t.calls_made for t in targets)
                check_upstream_log(bench, state, made)
                audit = check_keel_store(bench, folder, targets[1].calls_made)
                report(bench, targets)
                breakdown = run_breakdown(args, folder) if args.breakdown else None
                if breakdown is not None:
                    report_breakdown(breakdown, targets[1], targets[0])
                log(f"\nKeel store: {store_text}; {audit}")
        finally:
            upstream.stop()
    log(f"upstream calls logged: {made:,} (direct + through Keel, warm-up included)")
    if server_log.strip():
        log(f"keel serve's log (last lines):\n{server_log}")
    log(machine_note(load_before, ticks_before))
    if bench.problems:
        log("\nchecks: FAILED")
        for problem in bench.problems:
            log(f"  {problem}")
    else:
        log(
            "\nchecks: OK (every call answered with its order, one upstream call per call, "
            "one audit record per Keel call, chain verifies)"
        )
    log(f"bench took {time.perf_counter() - began:.0f} s")
    if bench.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
