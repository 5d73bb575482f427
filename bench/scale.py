"""Scale: worker processes, gateway replicas, a 10,000,000-record audit log; PostgreSQL vs SQLite.

    python bench/scale.py                  # full: about 10-14 min on the 2-core machine
    python bench/scale.py --quick          # smoke run: under a minute
    python bench/scale.py --skip-postgres  # SQLite only
    python bench/scale.py --records 2000000 --runs 300

Every measurement gets a fresh store: a SQLite file in a temporary folder, or a fresh PostgreSQL
schema (``CREATE SCHEMA bench_<random>``, reached with ``?options=-c search_path=...``) dropped at
the end. PostgreSQL comes from ``--pg-url`` (default ``$KEEL_BENCH_POSTGRES_URL``, then
``$KEEL_TEST_POSTGRES_URL``, then ``postgresql://postgres@127.0.0.1:5432/test``).

1. **Durable runs per second with 1, 2 and 4 worker processes.** ``--runs`` runs of a workflow of
   three governed tool steps are submitted into a fresh store; then K worker processes (this
   script with ``--role worker``: an App on the same store URL and home, ``worker.drain()``) start,
   say they are ready, and are released together. Time: from the release until the last worker
   has drained the queue. Baselines in the same run: SQLite, and PostgreSQL with
   ``synchronous_commit=off`` (the durability of SQLite's ``synchronous=NORMAL``: a crash may lose
   the last commits, never corrupt). Checked afterwards: every run completed, each exactly once
   (one ``run.started`` and one ``run.completed`` audit record, no recovery), every step ran once
   (the tool's own effect log, collected from the workers, holds each ``run_id/step`` key exactly
   once; the journal has three succeeded steps per run; three ``call`` records per run), and the
   audit chain verifies.
2. **Governed calls per second across gateway replicas.** 1 and 2 processes, each with its own App
   on the same store, call a governed tool in a loop with a fresh idempotency key per call for
   ``--seconds``. Checked: one audit record and one tool execution per call, chain verifies.
3. **Audit query for one run among ``--records`` audit records** (default 10,000,000 on
   PostgreSQL; ``--sqlite-records`` on SQLite). The records are written with bulk ``INSERT ...
   SELECT`` (``generate_series`` / a recursive CTE; secondary indexes dropped and rebuilt from
   their own definitions), shaped like a busy log: ~95 % inside runs, about 10 records per run
   spread over 10,000 consecutive records (1,000 runs in flight), 50 agents, 12 tools, ~310-byte
   bodies. Their hashes do not chain. Then ``keel.audit.query(store, run_id=...)`` is timed for
   ``--queries`` random runs after 10 warm-up queries (target p99 <= 10 ms). Baseline: the same
   SELECT on a bare driver connection, for other random runs, alternated with the API calls.
4. **Chain verification speed.** ``--chain-records`` genuinely chained records are appended
   through the App's ``AuditLog`` (1,000 appends per transaction; signed checkpoints every 1,000),
   then ``keel.audit.verify_chain(store, verifier=keys)`` is timed, 3 times (target >= 200,000
   records/s). Baselines: streaming the same rows without checking, and streaming plus
   ``chain_hash``.

The exit status is non-zero only when a correctness check fails, never for a missed target.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from keel import App, KeelConfig
from keel.audit import AuditEntry, chain_hash, iter_run_records, query, verify_chain
from keel.store import open_store
from keel.tools import ToolContext

HERE = Path(__file__).resolve()
POLICY = "policy: scale-bench\ntools: {allow: [bench.work]}\n"
SCOPES = ["bench:write"]
AGENT = "bench-bot"
STEPS = 3  # governed tool steps per run
WARMUP_CALLS = 50  # per gateway replica, before the clock starts
QUERY_TARGET_MS = 10.0
VERIFY_TARGET = 200_000  # records/s
DEFAULT_PG_URL = os.environ.get(
    "KEEL_BENCH_POSTGRES_URL",
    os.environ.get("KEEL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)

# The tool appends every execution's idempotency key here: the effect log the checks count.
EFFECTS: list[str] = []


def build_app(url: str, home: Path) -> App:
    """The App every process builds: one cheap governed tool and a workflow of three steps."""
    app = App(KeelConfig(store_url=url, home=home, audit_anchor_file=False))
    app.add_policy(POLICY)

    @app.tool("bench.work", scope="bench:write", effect="reversible", idempotent=True)
    def work(i: int, ctx: ToolContext) -> dict[str, int]:
        EFFECTS.append(str(ctx.idempotency_key))
        return {"i": i + 1}

    @app.workflow("three", agent=AGENT, scopes=SCOPES)
    async def three(run: Any, data: dict[str, int]) -> int:
        total = 0
        for step in range(STEPS):
            total += (await run.tool("bench.work", {"i": data["i"] + step}))["i"]
        return total

    return app


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log(message: str) -> None:
    print(message, flush=True)


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks from /proc/stat (zeros elsewhere): a shared VM's noise gauge."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


# -- stores -----------------------------------------------------------------------------------------


class Stores:
    """Fresh stores: SQLite files in a temporary folder, PostgreSQL schemas dropped at the end."""

    def __init__(self, pg_url: str | None) -> None:
        self.pg_url = pg_url
        self.folder = Path(tempfile.mkdtemp(prefix="keel-bench-scale-"))
        self._schemas: dict[str, str] = {}  # url -> schema
        self._count = 0

    def new(self, backend: str, *, options: str = "") -> str:
        self._count += 1
        if backend == "sqlite":
            return f"sqlite:///{self.folder / f'store-{self._count}.db'}"
        import psycopg

        assert self.pg_url is not None
        schema = f"bench_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.pg_url, autocommit=True) as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        libpq = quote(f"-c search_path={schema}{' ' + options if options else ''}")
        url = f"{self.pg_url}{'&' if '?' in self.pg_url else '?'}options={libpq}"
        self._schemas[url] = schema
        return url

    def home(self) -> Path:
        self._count += 1
        return self.folder / f"home-{self._count}"

    def sqlite_path(self, url: str) -> str:
        return url[len("sqlite:///") :]

    def drop(self, url: str) -> None:
        """Drop the store at ``url`` now (frees disk between measurements)."""
        schema = self._schemas.get(url)
        if schema is not None:
            import psycopg

            assert self.pg_url is not None
            with psycopg.connect(self.pg_url, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            del self._schemas[url]
        elif url.startswith("sqlite:///"):
            path = self.sqlite_path(url)
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        deadline = time.monotonic() + 60  # the server may be restarting: retry for a minute
        while self._schemas:
            url = next(iter(self._schemas))
            try:
                self.drop(url)
            except Exception as exc:
                if time.monotonic() > deadline:
                    log(f"could not drop schema {self._schemas.pop(url)}: {exc}")
                else:
                    time.sleep(1)
        shutil.rmtree(self.folder, ignore_errors=True)


def postgres_problem(url: str) -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg 3 is not installed (pip install 'keel[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {url}: {str(exc).strip()}"
    return None


# -- child processes ---------------------------------------------------------------------------------


def child_ready() -> None:
    """Tell the parent this process is ready, then wait for its go."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("the parent went away")


def worker_role(url: str, home: Path) -> dict[str, Any]:
    app = build_app(url, home)
    worker = app.runtime.worker(lease=30.0)
    child_ready()
    started = time.monotonic()
    outcomes = worker.drain()
    done = time.monotonic()
    app.close()
    return {"started": started, "done": done, "outcomes": outcomes, "effects": EFFECTS}


def replica_role(url: str, home: Path, replica: int, seconds: float) -> dict[str, Any]:
    app = build_app(url, home)
    agent = app.agent(AGENT, tenant="default", scopes=SCOPES)
    for i in range(WARMUP_CALLS):
        agent.call("bench.work", {"i": i}, idempotency_key=f"r{replica}-warm-{i}")
    child_ready()
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < seconds:
        agent.call("bench.work", {"i": calls}, idempotency_key=f"r{replica}-{calls}")
        calls += 1
    done = time.monotonic()
    app.close()
    return {"started": started, "done": done, "calls": calls, "effects": EFFECTS}


def run_children(argvs: list[list[str]], timeout: float) -> tuple[float, list[dict[str, Any]]]:
    """Start one process per argv, wait until all are ready, release them together.

    Returns the release time (``time.monotonic``, shared by processes on Linux) and each
    process's JSON result.
    """
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    with contextlib.ExitStack() as stack:
        try:
            for argv in argvs:
                err = stack.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    [sys.executable, str(HERE), *argv],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
                procs.append((proc, err))
            for proc, err in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != b"ready":
                    proc.wait(timeout=10)
                    raise RuntimeError(f"a child process failed to start:\n{_tail(err)}")
            released = time.monotonic()
            for proc, _ in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            results = []
            for proc, err in procs:
                out, _ = proc.communicate(timeout=timeout)
                if proc.returncode != 0:
                    raise RuntimeError(f"a child process failed ({proc.returncode}):\n{_tail(err)}")
                results.append(json.loads(out.decode().strip().splitlines()[-1]))
            return released, results
        finally:
            for proc, _ in procs:  # only the processes started here, by their handles
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _tail(err: Any) -> str:
    err.seek(0)
    return str(err.read()[-3000:].decode(errors="replace"))


# -- 1. durable runs per second ----------------------------------------------------------------------


def measure_runs(
    stores: Stores, backend: str, options: str, workers: int, runs: int
) -> dict[str, Any]:
    url = stores.new(backend, options=options)
    home = stores.home()
    app = build_app(url, home)
    ids = [f"run_scale_{i:06d}" for i in range(runs)]
    began = time.perf_counter()
    for i, run_id in enumerate(ids):
        app.runtime.submit("three", {"i": i}, run_id=run_id)
    submitted = time.perf_counter() - began
    argv = ["--role", "worker", "--url", url, "--home", str(home)]
    released, results = run_children([argv] * workers, timeout=1800)
    elapsed = max(r["done"] for r in results) - released
    problems = check_runs(app, ids, results)
    app.close()
    stores.drop(url)
    return {
        "runs_per_s": runs / elapsed,
        "elapsed_s": elapsed,
        "submit_per_s": runs / submitted,
        "per_worker": [sum(r["outcomes"].values()) for r in results],
        "problems": problems,
    }


def check_runs(app: App, ids: list[str], results: list[dict[str, Any]]) -> list[str]:
    """Every run completed exactly once and every step ran exactly once."""
    problems: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    effects: collections.Counter[str] = collections.Counter()
    for result in results:
        outcomes.update(result["outcomes"])
        effects.update(result["effects"])
    if dict(outcomes) != {"completed": len(ids)}:
        problems.append(f"workers reported {dict(outcomes)}, expected {len(ids)} completed")
    statuses = app.runtime.runs.counts()
    if statuses != {"completed": len(ids)}:
        problems.append(f"run statuses in the store: {statuses}")
    expected = {f"{run_id}/{step}" for run_id in ids for step in range(STEPS)}
    duplicates = sum(n - 1 for n in effects.values() if n > 1)
    missing = len(expected - set(effects))
    unexpected = len(set(effects) - expected)
    if duplicates or missing or unexpected:
        problems.append(
            f"tool effects: {duplicates} duplicated, {missing} missing, {unexpected} unexpected"
        )
    bad_journals = 0
    for run_id in ids:
        steps = app.runtime.steps(run_id)
        if len(steps) != STEPS or any(s.status != "succeeded" for s in steps):
            bad_journals += 1
    if bad_journals:
        problems.append(f"{bad_journals} runs without exactly {STEPS} succeeded journal steps")
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for record in iter_run_records(app.store):
        entry = record.entry
        assert entry.run_id is not None
        seen[entry.run_id][entry.rule_id if entry.kind == "control" else entry.kind] += 1
    wanted = {"run.submitted": 1, "run.started": 1, "run.completed": 1, "call": STEPS}
    bad_audit = sum(1 for run_id in ids if dict(seen.get(run_id, {})) != wanted)
    if bad_audit or len(seen) != len(ids):
        example = next((dict(seen.get(r, {})) for r in ids if dict(seen.get(r, {})) != wanted), {})
        problems.append(
            f"{bad_audit} runs whose audit records are not {wanted} (e.g. {example}); "
            f"{len(seen)} runs in the audit log"
        )
    report = verify_chain(app.store, verifier=app.keys)
    if not report.ok:
        problems.append(f"audit chain: {report.summary()}")
    return problems


# -- 2. governed calls per second across replicas ------------------------------------------------------


def measure_calls(stores: Stores, backend: str, replicas: int, seconds: float) -> dict[str, Any]:
    url = stores.new(backend)
    home = stores.home()
    app = build_app(url, home)  # creates the schema and the shared keys before the replicas
    common = ["--role", "replica", "--url", url, "--home", str(home), "--seconds", str(seconds)]
    argvs = [[*common, "--replica", str(r)] for r in range(replicas)]
    released, results = run_children(argvs, timeout=seconds + 600)
    elapsed = max(r["done"] for r in results) - released
    calls = sum(r["calls"] for r in results)
    problems: list[str] = []
    effects: collections.Counter[str] = collections.Counter()
    for result in results:
        effects.update(result["effects"])
    executed = calls + replicas * WARMUP_CALLS
    duplicates = sum(n - 1 for n in effects.values() if n > 1)
    if sum(effects.values()) != executed or duplicates:
        problems.append(
            f"tool executions {sum(effects.values())} for {executed} calls, {duplicates} repeated"
        )
    report = verify_chain(app.store, verifier=app.keys)
    if not report.ok:
        problems.append(f"audit chain: {report.summary()}")
    elif report.records_checked != executed:
        problems.append(f"{report.records_checked} audit records for {executed} calls")
    app.close()
    stores.drop(url)
    return {
        "calls_per_s": calls / elapsed,
        "calls": calls,
        "per_replica": [r["calls"] for r in results],
        "problems": problems,
    }


# -- 3. audit query among many records ---------------------------------------------------------------

RUNS_IN_FLIGHT = 1000  # runs whose records interleave
RECORDS_PER_RUN = 10
BLOCK = RUNS_IN_FLIGHT * RECORDS_PER_RUN
_RUN_NO = f"((x / {BLOCK}) * {RUNS_IN_FLIGHT} + x % {RUNS_IN_FLIGHT})"
_COLUMNS = (
    "chain, seq, ts, kind, tenant, agent, run_id, tool, decision, rule_id, body, prev_hash, hash"
)
_KIND = "CASE WHEN x % 10 < 7 THEN 'call' WHEN x % 10 < 9 THEN 'control' ELSE 'decision' END"
# Record x is outside any run when x % 20 = 19 (5 %): whole runs, since 1000 is a multiple of 20.
_NO_RUN = "x % 20 = 19"


def _body(hash_expr: str) -> str:
    """SQL for a ~310-byte JSON body shaped like a governed call's (valid for the query API)."""
    return (
        """'{"arguments":{"order_id":"ORD-' || x || '"},"call_id":"call_' || """
        f"substr({hash_expr}, 1, 24) || "
        """'","call_kind":"tool","latency_ms":' || (x % 997) || '.25,"outcome_digest":"' || """
        f"{hash_expr} || "
        """'","principal":{"agent_id":"agent-' || (x % 50) || '","roles":["support"],"""
        """"tenant":"tenant-' || (x % 5) || '"},"schema":1,"""
        """"verdict":{"decision":"allow","rule_id":"allow-tools"}}'"""
    )


_PG_INSERT = (
    f"INSERT INTO audit_records ({_COLUMNS}) "
    "SELECT 'main', x + 1, to_char(timestamp '2026-01-01' + x * interval '250 milliseconds', "
    """'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00', """
    f"{_KIND}, 'tenant-' || (x % 5), 'agent-' || (x % 50), "
    f"CASE WHEN {_NO_RUN} THEN NULL ELSE 'run_' || "
    f"lpad(to_hex(({_RUN_NO} * 2654435761) % 4294967296), 8, '0') || lpad({_RUN_NO}::text, 24, '0') END, "
    "'tool.' || (x % 12), 'allow', 'allow-tools', "
    f"{_body('h')}, reverse(h) || h, h || reverse(h) "
    # OFFSET 0 keeps the subquery: md5 runs once per row, not once per use of h.
    "FROM generate_series({lo}::bigint, {hi}::bigint) AS x, "
    "LATERAL (SELECT md5(x::text) AS h OFFSET 0) AS m"
)

_SQLITE_HASH = (
    "printf('%08x%08x%08x%08x', (x * 2654435761) % 4294967296, (x * 40503) % 4294967296, "
    "(x * 2246822519) % 4294967296, (x * 3266489917) % 4294967296)"
)
_SQLITE_INSERT = (
    "WITH RECURSIVE seq(x) AS (SELECT {lo} UNION ALL SELECT x + 1 FROM seq WHERE x < {hi}) "
    f"INSERT INTO audit_records ({_COLUMNS}) "
    "SELECT 'main', x + 1, strftime('%Y-%m-%dT%H:%M:%S', 1767225600 + x / 4, 'unixepoch') || "
    "printf('.%06d+00:00', (x % 4) * 250000), "
    f"{_KIND}, 'tenant-' || (x % 5), 'agent-' || (x % 50), "
    f"CASE WHEN {_NO_RUN} THEN NULL ELSE "
    f"printf('run_%08x%024d', ({_RUN_NO} * 2654435761) % 4294967296, {_RUN_NO}) END, "
    "'tool.' || (x % 12), 'allow', 'allow-tools', "
    f"{_body(_SQLITE_HASH)}, {_SQLITE_HASH} || {_SQLITE_HASH}, "
    f"substr({_SQLITE_HASH}, 17) || {_SQLITE_HASH} || substr({_SQLITE_HASH}, 1, 16) "
    "FROM seq"
)


def run_id_of(number: int) -> str:
    return f"run_{(number * 2654435761) % 4294967296:08x}{number:024d}"


def expected_records(number: int, total: int) -> int:
    """How many of ``total`` generated records belong to run ``number``."""
    block, slot = divmod(number, RUNS_IN_FLIGHT)
    return sum(
        1 for k in range(RECORDS_PER_RUN) if block * BLOCK + k * RUNS_IN_FLIGHT + slot < total
    )


def load_postgres(url: str, total: int) -> dict[str, float]:
    import psycopg

    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'audit_records' AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE connamespace = current_schema()::regnamespace)"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        began = time.perf_counter()
        chunk = 250_000
        done = [0]
        failures: list[BaseException] = []

        def part(first: int) -> None:  # two sessions: the generator is CPU-bound
            try:
                with psycopg.connect(url, autocommit=True) as session:
                    for lo in range(first * chunk, total, 2 * chunk):
                        hi = min(total, lo + chunk) - 1
                        session.execute(
                            _PG_INSERT.replace("{lo}", str(lo)).replace("{hi}", str(hi))
                        )
                        done[0] += hi - lo + 1
                        if done[0] % 2_000_000 < chunk:
                            log(
                                f"    {done[0]:,} records written ({time.perf_counter() - began:.0f} s)"
                            )
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=part, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        timings["insert_s"] = time.perf_counter() - began
        began = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition)
        timings["index_s"] = time.perf_counter() - began
        began = time.perf_counter()
        # What autovacuum would have done to a table this size by now; then flush the load's
        # dirty pages, so the queries do not share the disk with writing gigabytes.
        conn.execute("VACUUM ANALYZE audit_records")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # needs superuser (or pg_checkpoint on PostgreSQL 15+)
            log(f"    (no CHECKPOINT after the load: {str(exc).strip()})")
        timings["vacuum_s"] = time.perf_counter() - began
        size = conn.execute("SELECT pg_total_relation_size('audit_records')").fetchone()
        timings["size_mb"] = (size[0] if size else 0) / 2**20
    return timings


def load_sqlite(path: str, total: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a bulk load; the store's own settings apply after
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'audit_records' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        began = time.perf_counter()
        chunk = 1_000_000
        for lo in range(0, total, chunk):
            hi = min(total, lo + chunk) - 1
            conn.execute("BEGIN")
            conn.execute(_SQLITE_INSERT.replace("{lo}", str(lo)).replace("{hi}", str(hi)))
            conn.execute("COMMIT")
        timings["insert_s"] = time.perf_counter() - began
        began = time.perf_counter()
        for _, definition in indexes:
            conn.execute(definition)
        timings["index_s"] = time.perf_counter() - began
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # No ANALYZE: Keel does not run it, so the planner sees the store as a grown one would be.
    finally:
        conn.close()
    timings["size_mb"] = Path(path).stat().st_size / 2**20
    return timings


def measure_query(stores: Stores, backend: str, total: int, queries: int) -> dict[str, Any]:
    url = stores.new(backend)
    open_store(url).close()  # the tables, through Keel's own migrations
    log(f"  writing {total:,} audit records on {backend} ...")
    if backend == "sqlite":
        info = load_sqlite(stores.sqlite_path(url), total)
    else:
        info = load_postgres(url, total)
    log(
        f"  written in {info['insert_s']:.0f} s, indexes rebuilt in {info['index_s']:.0f} s"
        + (f", vacuum + checkpoint {info['vacuum_s']:.0f} s" if "vacuum_s" in info else "")
        + f"; audit_records {info['size_mb']:,.0f} MB"
    )
    rng = random.Random(7)
    numbers: list[int] = []  # pairs: one run for the query API, the next for the bare SELECT
    while len(numbers) < 2 * (queries + 10):
        x = rng.randrange(total)
        if x % 20 != 19:
            numbers.append((x // BLOCK) * RUNS_IN_FLIGHT + x % RUNS_IN_FLIGHT)
    problems: list[str] = []
    samples: list[float] = []
    floor: list[float] = []
    store = open_store(url)
    try:
        with bare_select(backend, stores, url) as select:
            # Alternate the two so that neither warms pages for the other or gets a quieter
            # stretch of the machine; the first 10 of each are warm-up.
            for i in range(0, len(numbers), 2):
                number, other = numbers[i], numbers[i + 1]
                run_id = run_id_of(number)
                began = time.perf_counter()
                records = query(store, run_id=run_id)
                spent = time.perf_counter() - began
                began = time.perf_counter()
                rows = select(run_id_of(other))
                bare = time.perf_counter() - began
                if i >= 20:
                    samples.append(spent)
                    floor.append(bare)
                want = expected_records(number, total)
                if len(records) != want or any(r.entry.run_id != run_id for r in records):
                    problems.append(f"query for {run_id} returned {len(records)}, not {want}")
                if len(rows) != expected_records(other, total):
                    problems.append(f"bare SELECT for {run_id_of(other)} returned {len(rows)}")
    finally:
        store.close()
    stores.drop(url)
    return {"samples": samples, "floor": floor, "info": info, "problems": problems[:5]}


@contextlib.contextmanager
def bare_select(backend: str, stores: Stores, url: str) -> Iterator[Callable[[str], list[Any]]]:
    """The query API's SELECT on a bare driver connection in autocommit: the floor."""
    sql = f"SELECT {_COLUMNS} FROM audit_records WHERE run_id = ? ORDER BY seq DESC, chain LIMIT ?"
    if backend == "sqlite":
        conn = sqlite3.connect(stores.sqlite_path(url), isolation_level=None)
        try:
            yield lambda run_id: conn.execute(sql, (run_id, 100)).fetchall()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        pg_sql = sql.replace("?", "%s")
        yield lambda run_id: pg.execute(pg_sql, (run_id, 100)).fetchall()


# -- 4. chain verification ------------------------------------------------------------------------

_RECORD_ROWS = f"SELECT {_COLUMNS} FROM audit_records ORDER BY chain, seq"


def audit_entry(i: int) -> AuditEntry:
    digest = hashlib.sha256(str(i).encode()).hexdigest()
    return AuditEntry(
        kind="call",
        tenant=f"tenant-{i % 5}",
        agent=f"agent-{i % 50}",
        run_id=f"run_{i // RECORDS_PER_RUN:032x}",
        step_id=str(i % RECORDS_PER_RUN),
        tool=f"tool.{i % 12}",
        call_id=f"call_{digest[:24]}",
        decision="allow",
        rule_id="allow-tools",
        body={
            "principal": {"agent_id": f"agent-{i % 50}", "roles": ["support"], "tenant": "acme"},
            "arguments": {"order_id": f"ORD-{i}"},
            "call_kind": "tool",
            "latency_ms": 0.25 + i % 997,
            "outcome_digest": digest,
            "verdict": {"decision": "allow", "rule_id": "allow-tools"},
        },
    )


def measure_verify(stores: Stores, backend: str, total: int) -> dict[str, Any]:
    url = stores.new(backend)
    app = App(KeelConfig(store_url=url, home=stores.home(), audit_anchor_file=False))
    began = time.perf_counter()
    batch = 1000
    for lo in range(0, total, batch):
        with app.store.write() as tx:
            for i in range(lo, min(total, lo + batch)):
                app.audit.append(tx, audit_entry(i))
    appended = time.perf_counter() - began
    store = app.store

    def stream(hashing: bool) -> float:
        began = time.perf_counter()
        with store.read() as tx:
            for row in tx.iterate(_RECORD_ROWS, batch=2000):
                if hashing:
                    chain_hash(*row[:12])
        return time.perf_counter() - began

    floor_read = min(stream(False) for _ in range(2))
    floor_hash = min(stream(True) for _ in range(2))
    runs: list[float] = []
    problems: list[str] = []
    for _ in range(3):
        began = time.perf_counter()
        report = verify_chain(store, verifier=app.keys)
        runs.append(time.perf_counter() - began)
        if not report.ok or report.records_checked != total:
            problems.append(f"verify: {report.summary()} ({report.records_checked} of {total})")
    app.close()
    stores.drop(url)
    return {
        "append_per_s": total / appended,
        "read_per_s": total / floor_read,
        "hash_per_s": total / floor_hash,
        "verify_per_s": total / statistics.median(runs),
        "verify_s": statistics.median(runs),
        "problems": problems[:3],
    }


# -- main ---------------------------------------------------------------------------------------


class Summary:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.failures: list[str] = []

    def add(
        self, what: str, backend: str, figure: str, target: str = "", verdict: str = ""
    ) -> None:
        self.rows.append((what, backend, figure, target or "no target", verdict or "—"))

    def check(self, what: str, problems: list[str]) -> None:
        if problems:
            self.failures.extend(f"{what}: {p}" for p in problems)

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows) for i in range(5)]
        head = ("measurement", "backend", "figure", "target", "verdict")
        widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
        log("\n== summary ==")
        for row in (head, *self.rows):
            log("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    parser.add_argument("--runs", type=int, help="runs per worker measurement (600; quick 40)")
    parser.add_argument(
        "--seconds", type=float, help="seconds per gateway measurement (8; quick 1.5)"
    )
    parser.add_argument("--records", type=int, help="audit records on PostgreSQL (10M; quick 200k)")
    parser.add_argument(
        "--sqlite-records", type=int, help="audit records on SQLite (1M; quick 100k)"
    )
    parser.add_argument("--queries", type=int, help="timed audit queries (200; quick 100)")
    parser.add_argument(
        "--chain-records", type=int, help="chained records verified (200k; quick 10k)"
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["runs", "calls", "query", "verify"],
        help="run only these parts (default: all four)",
    )
    parser.add_argument(
        "--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server URL (a schema is made in it)"
    )
    parser.add_argument("--role", choices=["worker", "replica"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--replica", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role is not None:
        if args.role == "worker":
            result = worker_role(args.url, Path(args.home))
        else:
            result = replica_role(args.url, Path(args.home), args.replica, args.seconds)
        print(json.dumps(result), flush=True)
        return

    quick = args.quick
    runs = args.runs or (40 if quick else 600)
    seconds = args.seconds or (1.5 if quick else 8.0)
    pg_records = args.records or (200_000 if quick else 10_000_000)
    sqlite_records = args.sqlite_records or (100_000 if quick else 1_000_000)
    queries = args.queries or (100 if quick else 200)
    chain_records = args.chain_records or (10_000 if quick else 200_000)

    backends = ["sqlite"]
    pg_url: str | None = None
    if not args.skip_postgres:
        problem = postgres_problem(args.pg_url)
        if problem is None:
            backends.append("postgresql")
            pg_url = args.pg_url
        else:
            log(f"PostgreSQL skipped: {problem}")
    began = time.perf_counter()
    ticks = cpu_ticks()
    summary = Summary()
    stores = Stores(pg_url)
    sections = {
        "runs": lambda: bench_runs(stores, backends, runs, summary),
        "calls": lambda: bench_calls(stores, backends, seconds, summary),
        "query": lambda: bench_query(
            stores, backends, pg_records, sqlite_records, queries, summary
        ),
        "verify": lambda: bench_verify(stores, backends, chain_records, summary),
    }
    try:
        for name, section in sections.items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            section()
            log(f"(section took {time.perf_counter() - started:.0f} s)")
    finally:
        stores.close()
    summary.print()
    steal, total = (now - then for now, then in zip(cpu_ticks(), ticks, strict=True))
    log(
        f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[1]:.1f} (5 min) at the "
        f"end, CPU steal during the bench {100 * steal / max(total, 1):.0f} %"
    )
    if summary.failures:
        log("\ncorrectness: FAILED")
        for failure in summary.failures:
            log(f"  {failure}")
    else:
        log("\ncorrectness: OK (every check above passed)")
    log(f"bench took {time.perf_counter() - began:.0f} s")
    if summary.failures:
        sys.exit(1)


def bench_runs(stores: Stores, backends: list[str], runs: int, summary: Summary) -> None:
    log(f"\n== 1. durable runs: {runs} runs of {STEPS} governed tool steps, K worker processes ==")
    variants = [("sqlite", "sqlite", "")]
    if "postgresql" in backends:
        variants += [
            ("postgresql", "postgresql", ""),
            ("postgresql, synchronous_commit=off", "postgresql", "-c synchronous_commit=off"),
        ]
    log(
        f"{'backend':36}  {'workers':>7}  {'runs/s':>8}  {'× 1 worker':>10}  {'drain s':>8}  "
        f"{'submit/s':>8}  runs per worker   correctness"
    )
    all_ok = True
    for label, backend, options in variants:
        single = 0.0
        for workers in (1, 2, 4):
            result = measure_runs(stores, backend, options, workers, runs)
            rate = result["runs_per_s"]
            single = single or rate
            problems = result["problems"]
            all_ok = all_ok and not problems
            summary.check(f"runs, {label}, {workers} workers", problems)
            log(
                f"{label:36}  {workers:7d}  {rate:8.1f}  {rate / single:10.2f}  "
                f"{result['elapsed_s']:8.2f}  {result['submit_per_s']:8.0f}  "
                f"{'/'.join(map(str, result['per_worker'])):15}  "
                f"{'OK' if not problems else 'FAILED: ' + '; '.join(problems)}"
            )
            summary.add(
                f"completed runs/s, {workers} worker process{'es' if workers > 1 else ''}",
                label,
                f"{rate:,.1f} runs/s ({rate / single:.2f}× of 1)",
            )
    log(
        f"correctness: {'every run completed exactly once and every step ran exactly once' if all_ok else 'FAILED (see above)'} "
        f"(effects per run_id/step, journal, audit records per run, chain verified)"
    )


def bench_calls(stores: Stores, backends: list[str], seconds: float, summary: Summary) -> None:
    log(
        f"\n== 2. governed calls/s across gateway replicas ({seconds:g} s each, idempotency keys) =="
    )
    log(
        f"{'backend':12}  {'replicas':>8}  {'calls/s':>9}  {'× 1':>6}  calls per replica   correctness"
    )
    for backend in backends:
        single = 0.0
        for replicas in (1, 2):
            result = measure_calls(stores, backend, replicas, seconds)
            rate = result["calls_per_s"]
            single = single or rate
            problems = result["problems"]
            summary.check(f"calls, {backend}, {replicas} replicas", problems)
            log(
                f"{backend:12}  {replicas:8d}  {rate:9.0f}  {rate / single:6.2f}  "
                f"{'/'.join(map(str, result['per_replica'])):18}  "
                f"{'OK' if not problems else 'FAILED: ' + '; '.join(problems)}"
            )
            summary.add(
                f"governed calls/s, {replicas} replica{'s' if replicas > 1 else ''}",
                backend,
                f"{rate:,.0f} calls/s ({rate / single:.2f}× of 1)",
            )


def bench_query(
    stores: Stores,
    backends: list[str],
    pg_records: int,
    sqlite_records: int,
    queries: int,
    summary: Summary,
) -> None:
    log(f"\n== 3. audit query of one run's records (keel.audit.query, {queries} random runs) ==")
    order = [("postgresql", pg_records)] if "postgresql" in backends else []
    order.append(("sqlite", sqlite_records))
    lines = []
    for backend, total in order:
        result = measure_query(stores, backend, total, queries)
        summary.check(f"query, {backend}", result["problems"])
        samples, floor = result["samples"], result["floor"]
        p50, p99 = pct(samples, 0.5) * 1e3, pct(samples, 0.99) * 1e3
        lines.append(
            f"{backend:10}  {total:>12,}  {'query API':18}  {p50:8.3f}  {p99:8.3f}  "
            f"{max(samples) * 1e3:8.3f}"
        )
        lines.append(
            f"{backend:10}  {total:>12,}  {'bare SELECT':18}  {pct(floor, 0.5) * 1e3:8.3f}  "
            f"{pct(floor, 0.99) * 1e3:8.3f}  {max(floor) * 1e3:8.3f}"
        )
        summary.add(
            f"audit query p50 / p99, {total:,} records",
            backend,
            f"{p50:.2f} / {p99:.2f} ms",
            f"p99 ≤ {QUERY_TARGET_MS:g} ms",
            met(p99 <= QUERY_TARGET_MS),
        )
        checked = (
            "every query returned exactly its run's records"
            if not result["problems"]
            else "FAILED: " + "; ".join(result["problems"])
        )
        log(
            f"  {backend}: p99 {p99:.2f} ms (target ≤ {QUERY_TARGET_MS:g} ms: "
            f"{met(p99 <= QUERY_TARGET_MS)}); {checked}"
        )
    log(
        f"{'backend':10}  {'records':>12}  {'measurement':18}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}"
    )
    for line in lines:
        log(line)


def bench_verify(stores: Stores, backends: list[str], total: int, summary: Summary) -> None:
    log(f"\n== 4. chain verification: {total:,} chained records (keel.audit.verify_chain) ==")
    log(
        f"{'backend':12}  {'append/s':>9}  {'read rows/s':>11}  {'read+hash/s':>11}  {'verify/s':>9}  correctness"
    )
    for backend in backends:
        result = measure_verify(stores, backend, total)
        rate = result["verify_per_s"]
        summary.check(f"verify, {backend}", result["problems"])
        log(
            f"{backend:12}  {result['append_per_s']:9,.0f}  {result['read_per_s']:11,.0f}  "
            f"{result['hash_per_s']:11,.0f}  {rate:9,.0f}  "
            f"{'OK' if not result['problems'] else 'FAILED: ' + '; '.join(result['problems'])}"
        )
        summary.add(
            f"chain verification, {total:,} records",
            backend,
            f"{rate:,.0f} records/s",
            f"≥ {VERIFY_TARGET:,}/s",
            met(rate >= VERIFY_TARGET),
        )


if __name__ == "__main__":
    main()
