"""Dashboard page loads with 100,000 runs in the store (issue 8: every page < 300 ms).

    python bench/dashboard.py                       # SQLite (Keel's default), ≈ 1 min
    python bench/dashboard.py --postgres            # also PostgreSQL at 127.0.0.1:5432/test
    python bench/dashboard.py --runs 20000 --samples 10

The store holds real Keel data: ``keel demo`` runs its 250 workflows (support tickets and
purchase requests) through the real gateway and worker; the benchmark then copies every run
with its journal steps, audit records, budget reservations and approvals until the store holds
``--runs`` runs, spread over the past 30 days (copies get new ids and earlier timestamps; the
copied audit records keep the originals' hashes, so the copies are not a valid chain — page
loads do not verify chains; the originals' sequence numbers move above the copies', as time
runs in a real log). ``keel serve`` runs as a subprocess over that store; an admin
operator logs in as a browser would (session cookie) and each screen is fetched ``--samples``
times over real HTTP.

Baseline, measured in the same run: the same pages over the demo's own store (250 runs) before
it is grown. Figures are the client's wall time per page (request to last byte): the first load
after the server starts (cold caches; the spend screen closes the hours it reads into its rollup),
then p50 and max of ``--samples`` loads; "met" is max < 300 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import free_port

TARGET_MS = 300.0
SPREAD_MINUTES = 30 * 24 * 60
#: Tables copied per run, and how each column changes in a copy: ``id`` gets a suffix, ``ts`` is
#: moved earlier, ``seq`` is offset (audit sequence numbers stay unique in their chain).
COPIED: dict[str, dict[str, str]] = {
    "runs": {
        "run_id": "id",
        "parent_run": "id",
        "created_at": "ts",
        "updated_at": "ts",
        "wake_at": "ts",
        "deadline": "ts",
        "lease_expires": "ts",
    },
    "journal": {
        "run_id": "id",
        "approval_id": "id",
        "started_at": "ts",
        "finished_at": "ts",
        "wake_at": "ts",
    },
    "audit_records": {"run_id": "id", "seq": "seq", "ts": "ts"},
    "ledger_reservations": {
        "reservation_id": "id",
        "run_id": "id",
        "call_id": "id",
        "created_at": "ts",
        "expires_at": "ts",
        "expired_at": "ts",
        "finished_at": "ts",
    },
    "approvals": {
        "approval_id": "id",
        "run_id": "id",
        "binding": "id",
        "created_at": "ts",
        "deadline": "ts",
        "decided_at": "ts",
        "token_expires": "ts",
        "used_at": "ts",
    },
}
#: Rows outside any run are not copied (their ids are not per run).
IN_RUN = {"audit_records": "run_id IS NOT NULL", "ledger_reservations": "run_id IS NOT NULL"}
SEQ_STRIDE = 1_000_000
#: Approvals left waiting in the grown store: the queue screen at its fullest.
PENDING = 200


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the store ------------------------------------------------------------------------------------


def run_demo(folder: Path) -> Path:
    """``keel demo`` in ``folder``; returns its directory (config, SQLite store, keys)."""
    demo = folder / "keel-demo"
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "keel", "demo", "--dir", str(demo), "--quiet"],
        check=True,
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    log(f"keel demo: {time.perf_counter() - began:.1f} s")
    return demo


def columns_of(conn: Any, table: str, dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()]
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
        "AND table_schema = current_schema() ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [row[0] for row in rows]


def copy_expr(column: str, how: str | None, dialect: str) -> str:
    """The SQL for ``column`` in copy number ``k``."""
    if how == "id":
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE {column} || '~' || k END"
    if how == "seq":  # the originals were moved up first: older copies, lower numbers
        return f"{column} - k * {SEQ_STRIDE}"
    if how == "ts":
        minutes = f"(k * {SPREAD_MINUTES} / copies)"
        if dialect == "sqlite":
            shifted = (
                f"strftime('%Y-%m-%dT%H:%M:%S', substr({column}, 1, 19), "
                f"'-' || {minutes} || ' minutes') || substr({column}, 20)"
            )
        else:
            shifted = (
                f"to_char(substr({column}, 1, 19)::timestamp - make_interval(mins => "
                f"{minutes}::int), 'YYYY-MM-DD\"T\"HH24:MI:SS') || substr({column}, 20)"
            )
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE {shifted} END"
    return column


def grow(conn: Any, dialect: str, runs: int) -> int:
    """Copy every run (and what belongs to it) until the store holds ``runs`` runs; returns how
    far the originals' audit sequence numbers moved."""
    have = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    copies = max(0, -(-runs // have) - 1)
    counts: dict[str, int] = {}
    batch = 25
    # Sequence numbers grow with time in a real log: the originals (the newest records) move
    # above every copy's. Their checkpoints move with them (their signatures, over the old
    # numbers, no longer verify: pages do not verify).
    for table in ("audit_records", "audit_checkpoints"):
        conn.execute(f"UPDATE {table} SET seq = seq + {(copies + 1) * SEQ_STRIDE}")
    for table, changes in COPIED.items():
        columns = columns_of(conn, table, dialect)
        exprs = ", ".join(copy_expr(c, changes.get(c), dialect) for c in columns)
        where = IN_RUN.get(table, "TRUE")
        if dialect == "sqlite":
            where = where.replace("TRUE", "1")
        began = time.perf_counter()
        for first in range(1, copies + 1, batch):
            last = min(copies, first + batch - 1)
            if dialect == "sqlite":
                ks = (
                    f"WITH RECURSIVE ks(k) AS (SELECT {first} UNION ALL SELECT k + 1 FROM ks "
                    f"WHERE k < {last}) "
                )
                source = f"{table}, ks"
            else:
                ks = ""
                source = f"{table}, generate_series({first}, {last}) AS ks(k)"
            plain = (
                "position('~' in run_id) = 0" if dialect != "sqlite" else "instr(run_id, '~') = 0"
            )
            sql = (
                f"{ks}INSERT INTO {table} ({', '.join(columns)}) "
                f"SELECT {exprs.replace('copies', str(copies + 1))} FROM {source} "
                f"WHERE {where} AND {plain}"
            )
            conn.execute(sql)
            if dialect == "sqlite":
                conn.commit()
        counts[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        log(f"  {table}: {counts[table]:,} rows ({time.perf_counter() - began:.1f} s)")
    return int((copies + 1) * SEQ_STRIDE)


def open_approvals(conn: Any, pending: int, mark: str) -> None:
    """The newest ``pending`` approvals (of copies) wait for a person again, their history cut
    back to the request: the queue at its fullest (the screen lists at most 200 a state)."""
    rows = conn.execute(
        "SELECT approval_id, decisions FROM approvals WHERE approval_id LIKE '%~%' "
        f"ORDER BY created_at DESC LIMIT {pending}"
    ).fetchall()
    for approval_id, decisions in rows:
        history = json.loads(decisions)
        history["events"] = [e for e in history["events"] if e["action"] == "request"]
        conn.execute(
            "UPDATE approvals SET status = 'pending', decided_at = NULL, used_at = NULL, "
            f"decisions = {mark} WHERE approval_id = {mark}",
            (json.dumps(history), approval_id),
        )


def trim_runs(conn: Any, runs: int) -> None:
    """Exactly ``runs`` runs: drop the newest extra copies' run rows (their records stay)."""
    extra = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] - runs
    if extra > 0:
        conn.execute(
            "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE run_id LIKE '%~%' "
            f"ORDER BY created_at LIMIT {extra})"
        )


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    import psycopg

    schema = f"bench_dash_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}{'&' if '?' in url else '?'}options={quote(f'-c search_path={schema}')}"
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        log(f"dropped schema {schema}")


def to_postgres(sqlite_path: Path, url: str, config: Path) -> None:
    """Migrate a fresh PostgreSQL schema with Keel, then copy every demo table into it."""
    import psycopg

    from keel import App, load_config

    with App(load_config(config)):
        pass  # migrations
    source = sqlite3.connect(sqlite_path)
    with psycopg.connect(url, autocommit=False) as conn:
        tables = [
            r[0]
            for r in source.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'keel_schema'"
            )
        ]
        for table in tables:
            columns = [r[1] for r in source.execute(f"PRAGMA table_info({table})")]
            rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            conn.execute(f"DELETE FROM {table}")
            if rows:
                marks = ", ".join(["%s"] * len(columns))
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                    )
        conn.commit()
    source.close()


# -- the pages ------------------------------------------------------------------------------------


@contextlib.contextmanager
def served(demo: Path, config: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KEEL_DEMO_DIR": str(demo)}
    with open(demo / "serve.log", "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keel",
                "serve",
                "--app",
                "keel.demo.workflows:demo_app",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=demo,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"keel serve exited; see {demo / 'serve.log'}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def admin_key(config: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "keel",
            "keys",
            "create",
            "--name",
            "bench",
            "--role",
            "admin",
            "--config",
            str(config),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(out)["key"])


def pages(client: httpx.Client, store: Any) -> list[tuple[str, str]]:
    """The screens to time: ``(label, path)``; ids come from the store."""
    run_id, chain, seq, rule = store
    listing = client.get("/runs").text
    older = re.search(r'href="(/runs\?[^"]*before=[^"]+)"', listing)
    found = [
        ("approvals queue", "/approvals"),
        ("runs, newest", "/runs"),
        ("runs, support completed", "/runs?workflow=support&status=completed"),
        ("runs, last 24 h", "/runs?window=24h"),
        ("run timeline", f"/runs/{run_id}"),
        ("spend, default", "/spend"),
        ("spend, support 30 d", "/spend?workflow=support&window=30d"),
        ("kill switches", "/kill-switches"),
        ("audit, newest", "/audit"),
        ("audit, one run", f"/audit?run_id={run_id}"),
        ("audit, one tool", "/audit?tool=billing.refund"),
        ("audit, one rule", f"/audit?rule_id={quote(rule)}"),
        ("audit record", f"/audit/{chain}/{seq}"),
        ("policies", "/policies"),
        ("health", "/health"),
    ]
    if older:
        found.insert(2, ("runs, page 2", older.group(1).replace("&amp;", "&")))
    return found


def measure(base: str, key: str, ids: Any, samples: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        login = client.post("/login", data={"key": key, "next": "/approvals"})
        if login.headers.get("location") != "/approvals":
            raise RuntimeError(f"login failed: {login.status_code} {login.headers}")
        for label, path in pages(client, ids):
            began = time.perf_counter()
            client.get(path)  # the first load: a cold cache, the spend rollup filled
            first = (time.perf_counter() - began) * 1000
            times = []
            status = 0
            size = 0
            for _ in range(samples):
                began = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - began) * 1000)
                status, size = response.status_code, len(response.content)
            figures[label] = {
                "first": first,
                "p50": statistics.median(times),
                "max": max(times),
                "status": status,
                "kb": size / 1024,
            }
    return figures


def sample_ids(demo: Path) -> tuple[str, str, int, str]:
    """A demo run that waited for approval, one of its records, and a rule id."""
    conn = sqlite3.connect(demo / "keel.db")
    try:
        row = conn.execute(
            "SELECT run_id, chain, seq, rule_id FROM audit_records WHERE decision = "
            "'require_approval' AND run_id IS NOT NULL ORDER BY seq LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return str(row[0]), str(row[1]), int(row[2]), str(row[3])


def report(backend: str, base: dict[str, Any], grown: dict[str, Any], runs: int) -> bool:
    print(f"\n{backend}: page load, p50 / max in ms (target < {TARGET_MS:.0f} ms)")
    print(
        f"| page | demo store (250 runs) p50 | {runs:,} runs: first load | p50 | max | KB | met |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    ok = True
    for label, figure in grown.items():
        before = base.get(label, {}).get("p50")
        met = figure["max"] < TARGET_MS and figure["status"] == 200
        ok = ok and met
        shown = "—" if before is None else f"{before:.1f}"
        verdict = "yes" if met else f"NO (status {figure['status']})"
        print(
            f"| {label} | {shown} | {figure['first']:.1f} | {figure['p50']:.1f} | "
            f"{figure['max']:.1f} | "
            f"{figure['kb']:.0f} | {verdict} |"
        )
    return ok


def bench(backend: str, folder: Path, demo: Path, runs: int, samples: int, pg_url: str) -> bool:
    ids = sample_ids(demo)
    work = folder / backend
    shutil.copytree(demo, work)
    if backend == "postgresql":
        # The demo's App reads its folder's keel.yaml (``--app`` wins over ``--config``), so
        # this copy of the folder names the PostgreSQL store.
        with postgres_schema(pg_url) as url:
            config = work / "keel.yaml"
            config.write_text(config.read_text().replace("sqlite:///keel.db", url))
            to_postgres(work / "keel.db", url, config)
            return measure_both(backend, work, config, ids, runs, samples, pg_url=url)
    return measure_both(backend, work, work / "keel.yaml", ids, runs, samples, pg_url=None)


def measure_both(
    backend: str, demo: Path, config: Path, ids: Any, runs: int, samples: int, *, pg_url: str | None
) -> bool:
    key = admin_key(config)
    with served(demo, config) as base:
        baseline = measure(base, key, ids, samples)
    log(f"{backend}: growing the store to {runs:,} runs")
    began = time.perf_counter()
    if pg_url is None:
        conn: Any = sqlite3.connect(demo / "keel.db")
        try:
            moved = grow(conn, "sqlite", runs)
            trim_runs(conn, runs)
            open_approvals(conn, PENDING, "?")
            conn.commit()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:
            moved = grow(conn, "postgresql", runs)
            trim_runs(conn, runs)
            open_approvals(conn, PENDING, "%s")
            conn.execute("VACUUM ANALYZE")
    log(f"{backend}: grown in {time.perf_counter() - began:.0f} s")
    run_id, chain, seq, rule = ids
    with served(demo, config) as base:
        grown = measure(base, key, (run_id, chain, seq + moved, rule), samples)
    return report(backend, baseline, grown, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    parser.add_argument("--postgres-url", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--dir", help="work here (a new folder, kept) instead of a temp dir")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.dir:
            folder = Path(args.dir)
            folder.mkdir(parents=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-dash-")))
        demo = run_demo(folder)
        ok = bench("sqlite", folder, demo, args.runs, args.samples, args.postgres_url)
        if args.postgres:
            ok = (
                bench("postgresql", folder, demo, args.runs, args.samples, args.postgres_url) and ok
            )
    print(f"\nevery page under {TARGET_MS:.0f} ms at {args.runs:,} runs: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
