"""Driver for bench/durable_step.py: per-step cost of a DBOS workflow on SQLite.

Runs inside the comparison virtualenv (dbos), never in Keel's:

    python bench/_compare_dbos.py --db FILE --steps 200 --reps 15 --mode same|defaults

The workflow calls a ``@DBOS.step()`` that calls ``work``, ``steps`` times; DBOS records each
step's output in its system database before the workflow goes on. ``same`` matches Keel's SQLite
settings (WAL, ``synchronous=NORMAL``) on every connection DBOS opens; ``defaults`` is DBOS as
shipped (SQLite's rollback journal with ``synchronous=FULL``).

Prints one JSON object: the version and, per repetition, the workflow's time and the time of a
plain loop calling ``work`` as many times, in seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from importlib.metadata import version
from typing import Any

from dbos import DBOS, SetWorkflowID
from sqlalchemy import event
from sqlalchemy.engine import Engine

MODE = {"value": "same"}
SEEN: dict[str, Any] = {}


@event.listens_for(Engine, "connect")
def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    if MODE["value"] == "same":
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    for pragma in ("journal_mode", "synchronous"):
        SEEN[pragma] = dbapi_conn.execute(f"PRAGMA {pragma}").fetchone()[0]


def work(i: int) -> int:
    return i + 1


@DBOS.step()
def work_step(i: int) -> int:
    return work(i)


@DBOS.workflow()
def steps(n: int, base: int) -> int:
    x = 0
    for i in range(n):
        x = work_step(base + i)
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--mode", choices=["same", "defaults"], default="same")
    args = parser.parse_args()
    MODE["value"] = args.mode
    n = args.steps
    logging.getLogger("dbos").setLevel(logging.WARNING)

    DBOS(
        config={
            "name": "keel-bench",
            "system_database_url": f"sqlite:///{args.db}",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    samples = []
    try:
        for rep in range(args.reps + 1):  # the first repetition warms up and is dropped
            base = rep * n
            start = time.perf_counter()
            with SetWorkflowID(f"bench-{rep}"):
                x = steps(n, base)
            elapsed = time.perf_counter() - start
            assert x == base + n, x
            start = time.perf_counter()
            for i in range(n):
                work(base + i)
            loop = time.perf_counter() - start
            if rep:
                samples.append({"workflow_s": elapsed, "loop_s": loop})
        recorded = len(DBOS.list_workflow_steps("bench-1"))
    finally:
        DBOS.destroy()
    print(
        json.dumps(
            {
                "system": "dbos",
                "mode": args.mode,
                **SEEN,
                "versions": {"dbos": version("dbos")},
                "steps_recorded_per_run": recorded,
                "samples": samples,
            }
        )
    )


if __name__ == "__main__":
    main()
