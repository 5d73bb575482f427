"""Driver for bench/durable_step.py: per-step cost of a LangGraph graph with SqliteSaver.

Runs inside the comparison virtualenv (langgraph + langgraph-checkpoint-sqlite), never in Keel's:

    python bench/_compare_langgraph.py --db FILE --steps 200 --reps 15 --mode same|defaults

The workflow is one node that calls ``work`` and loops back to itself until it has run ``steps``
times: one superstep, hence one checkpoint, per step. ``same`` matches Keel's durability and
SQLite settings: ``durability="sync"`` (a step's checkpoint is written before the next step
starts, as Keel commits its journal) and WAL with ``synchronous=NORMAL``. ``defaults`` is
LangGraph as shipped: ``durability="async"`` (checkpoints written in the background while the
next step runs) and SqliteSaver's WAL with SQLite's default ``synchronous=FULL``.

Prints one JSON object: the versions and, per repetition, the workflow's time and the time of a
plain loop calling ``work`` as many times, in seconds.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from importlib.metadata import version
from typing import Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph


def work(i: int) -> int:
    return i + 1


class State(TypedDict):
    i: int
    n: int
    base: int
    x: int


def step(state: State) -> dict[str, Any]:
    return {"i": state["i"] + 1, "x": work(state["base"] + state["i"])}


def route(state: State) -> str:
    return END if state["i"] >= state["n"] else "step"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--mode", choices=["same", "defaults"], default="same")
    args = parser.parse_args()
    n = args.steps

    conn = sqlite3.connect(args.db, check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()  # creates the tables and sets journal_mode=WAL
    if args.mode == "same":
        conn.execute("PRAGMA synchronous=NORMAL")
    durability = "sync" if args.mode == "same" else "async"

    builder = StateGraph(State)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", route)
    graph = builder.compile(checkpointer=saver)

    samples = []
    for rep in range(args.reps + 1):  # the first repetition warms up and is dropped
        base = rep * n
        config = {"configurable": {"thread_id": f"bench-{rep}"}, "recursion_limit": n + 10}
        start = time.perf_counter()
        out = graph.invoke({"i": 0, "n": n, "base": base, "x": 0}, config, durability=durability)
        elapsed = time.perf_counter() - start
        assert out["x"] == base + n, out
        start = time.perf_counter()
        for i in range(n):
            work(base + i)
        loop = time.perf_counter() - start
        if rep:
            samples.append({"workflow_s": elapsed, "loop_s": loop})
    checkpoints = conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
    print(
        json.dumps(
            {
                "system": "langgraph",
                "mode": args.mode,
                "durability": durability,
                "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "versions": {p: version(p) for p in ("langgraph", "langgraph-checkpoint-sqlite")},
                "checkpoints_per_run": checkpoints / (args.reps + 1),
                "samples": samples,
            }
        )
    )


if __name__ == "__main__":
    main()
