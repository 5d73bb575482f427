"""Per-step overhead of a durable step: Keel against LangGraph (SqliteSaver) and DBOS on SQLite.

    python bench/durable_step.py [--steps 200] [--reps 15] [--no-compare]

Per-step overhead = (time of a workflow of N trivial steps − time of a plain loop calling the same
function N times) / N, on a file-backed SQLite in a temporary folder, once per repetition; the
table gives the p50 and mean over the repetitions (the first repetition warms up and is dropped).
The fixed cost of a run (submit, claim, completion) is spread over its N steps, as it is for the
other systems.

Keel is measured in this process, three ways:

- *governed step*: ``await run.tool(...)`` through the whole chain: journal ``started`` commit,
  a hop to a worker thread, the gateway (token, validation, scope, policy, idempotency key, tool,
  redaction, one hash-chained audit record committed with the idempotency outcome), the outcome
  payload and the journal ``succeeded`` commit;
- *journal only*: the same step protocol (digest, ``started`` commit, outcome payload,
  ``succeeded`` commit) with the gateway bypassed: the function runs in line. This is Keel's own
  durable-step bookkeeping, the figure to compare with a checkpoint or a step record;
- *replay*: resuming a run whose N steps are recorded (each answered from the journal).

LangGraph and DBOS run in a separate virtualenv, created on first use (``python -m venv`` and pip
from the package index; about 20 s) at ``$KEEL_BENCH_VENV`` or
``~/.cache/keel-bench/venv-compare``, outside the repository. The drivers are
``bench/_compare_langgraph.py`` and ``bench/_compare_dbos.py``. Each is measured twice: with
Keel's durability and SQLite settings (each step durable before the next starts; WAL,
``synchronous=NORMAL``) and as shipped. If the virtualenv cannot be made (no network), the
comparison is skipped with a message and Keel's figures are still printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from keel import App, KeelConfig
from keel.gateway import CallRequest

HERE = Path(__file__).resolve().parent
POLICY = "policy: durable-step-bench\ntools: {allow: [bench.work]}\n"
SCOPES = ["bench:write"]

# Pinned so that figures from different days compare; the venv is rebuilt when these change.
COMPARE = {
    "langgraph": {
        "requirements": ["langgraph==1.2.22", "langgraph-checkpoint-sqlite==3.1.2"],
        "driver": "_compare_langgraph.py",
        "label": "LangGraph + SqliteSaver",
    },
    "dbos": {
        "requirements": ["dbos==3.4.0"],
        "driver": "_compare_dbos.py",
        "label": "DBOS on SQLite",
    },
}
MODES = {
    "same": "Keel's settings: durable per step, WAL, synchronous=NORMAL",
    "defaults": "as shipped",
}


def work(i: int) -> int:
    return i + 1


# -- Keel ---------------------------------------------------------------------------------------


def build_app(tmp: Path) -> App:
    config = KeelConfig(
        store_url=f"sqlite:///{tmp / 'keel.db'}", home=tmp / "home", audit_anchor_file=False
    )
    app = App(config)
    app.add_policy(POLICY)
    # A tool that changes something and honours idempotency keys: the usual durable step. Keel
    # takes no separate in-flight claim for it, so the gateway commits once per call.
    app.tool("bench.work", scope="bench:write", effect="reversible", idempotent=True)(work)

    @app.workflow("governed", agent="bench-bot", scopes=SCOPES)
    async def governed(run: Any, data: dict[str, int]) -> int:
        x = 0
        for i in range(data["n"]):
            x = await run.tool("bench.work", {"i": data["base"] + i})
        return x

    @app.workflow("journal", agent="bench-bot", scopes=SCOPES)
    async def journal(run: Any, data: dict[str, int]) -> int:
        x = 0
        for i in range(data["n"]):
            arguments = {"i": data["base"] + i}

            async def execute(
                step_id: str, approval_id: str | None, arguments: dict[str, int] = arguments
            ) -> int:
                return work(**arguments)

            # The step protocol of run.tool without the gateway (a private hook, bench only).
            x = await run._step("tool", "bench.work", arguments, execute)
        return x

    @app.workflow("replay", agent="bench-bot", scopes=SCOPES)
    async def replay(run: Any, data: dict[str, int]) -> int:
        x = 0
        for i in range(data["n"]):
            x = await run.tool("bench.work", {"i": data["base"] + i})
        await run.sleep(0)  # suspends once; the next execution replays every step above
        return x

    return app


def plain_loop(n: int, base: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        work(base + i)
    return time.perf_counter() - start


def measure_keel(n: int, reps: int) -> dict[str, list[float]]:
    """Per-step overhead in seconds, one value per repetition, for each Keel measurement."""
    results: dict[str, list[float]] = {"governed": [], "journal": [], "replay": []}
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        app = build_app(Path(tmp))
        worker = app.runtime.worker()
        submit = app.runtime.submit
        offset = {"governed": 0, "journal": 10_000_000, "replay": 20_000_000}
        for rep in range(reps + 1):
            for name in ("governed", "journal", "replay"):
                # Distinct arguments and results per run: no payload is deduplicated across runs.
                data = {"n": n, "base": offset[name] + rep * n}
                if name == "replay":
                    submit(name, data)
                    assert worker.run_once() == "waiting"
                    start = time.perf_counter()
                    assert worker.run_once() == "completed"
                else:
                    start = time.perf_counter()
                    submit(name, data)
                    assert worker.run_once() == "completed"
                elapsed = time.perf_counter() - start
                loop = plain_loop(n, data["base"])
                if rep:
                    results[name].append((elapsed - loop) / n)
        assert app.verify_audit().ok
        app.close()
    return results


def measure_parts(calls: int, n: int) -> dict[str, float]:
    """Median seconds of the parts of a governed step, for the breakdown under the table."""
    parts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        app = build_app(Path(tmp))
        runtime = app.runtime
        agent = app.agent(
            "bench-bot", tenant=app.workflow_tenant("governed"), scopes=SCOPES, run_id="run_parts"
        )

        def governed_call(i: int) -> None:
            app.gateway.call(
                CallRequest(
                    tool="bench.work",
                    arguments={"i": i},
                    token=agent.token,
                    run_id="run_parts",
                    step_id=str(i),
                    workflow="governed",
                )
            )

        parts["gateway call with run and step ids, in line"] = median_of(governed_call, calls)

        # Inside governed runs: time each store call and the gateway call as run.tool makes them.
        inside: dict[str, list[float]] = {}
        for label, owner, name in (
            ("journal 'started' commit", runtime.runs, "begin_step"),
            ("gateway call, in run.tool's worker thread", app.gateway, "call"),
            ("outcome payload (look-up + commit)", app.payloads, "put"),
            ("journal 'succeeded' commit", runtime.runs, "finish_step"),
        ):
            inside[label] = []
            setattr(owner, name, timed(getattr(owner, name), inside[label]))
        worker = runtime.worker()
        totals = []
        for rep in range(6):
            for samples in inside.values():
                samples.clear()
            start = time.perf_counter()
            runtime.submit("governed", {"n": n, "base": 30_000_000 + rep * n})
            assert worker.run_once() == "completed"
            totals.append((time.perf_counter() - start) / n)
        total = statistics.median(totals)
        parts["governed step, these runs (wrapped)"] = total
        for label, samples in inside.items():
            parts[f"  {label}"] = statistics.median(samples)
        parts["  the rest: event loop, thread hop, run start and end"] = total - sum(
            statistics.median(v) for v in inside.values()
        )
        app.close()

    async def hops() -> list[float]:
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            await asyncio.to_thread(work, 1)
            samples.append(time.perf_counter() - start)
        return samples

    parts["asyncio.to_thread hop alone"] = statistics.median(asyncio.run(hops()))
    return parts


def timed(fn: Callable[..., Any], samples: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            samples.append(time.perf_counter() - start)

    return wrapper


def median_of(fn: Callable[[int], Any], calls: int) -> float:
    for i in range(100):
        fn(-i - 1)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# -- the comparison virtualenv -------------------------------------------------------------------


def venv_path() -> Path:
    configured = os.environ.get("KEEL_BENCH_VENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "keel-bench" / "venv-compare"


def ensure_venv(path: Path, system: str) -> Path | None:
    """The venv's python with ``system`` installed at its pinned versions, or None (printed)."""
    python = path / "bin" / "python"
    requirements = COMPARE[system]["requirements"]
    marker = path / f"keel-bench-{system}.txt"
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    try:
        if not python.exists():
            print(f"creating the comparison virtualenv at {path} ...", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "venv", str(path)],
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            )
        print(f"installing {' '.join(requirements)} into {path} ...", flush=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *requirements],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        tail = "\n    ".join(str(detail).strip().splitlines()[-5:])
        print(
            f"!! could not install {COMPARE[system]['label']} into {path}; skipping it.\n"
            f"    {tail}",
            flush=True,
        )
        return None
    marker.write_text(wanted)
    return python


def run_driver(python: Path, system: str, mode: str, n: int, reps: int) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory(prefix=f"keel-bench-{system}-") as tmp:
        command = [
            str(python),
            str(HERE / str(COMPARE[system]["driver"])),
            "--db",
            str(Path(tmp) / "bench.db"),
            "--steps",
            str(n),
            "--reps",
            str(reps),
            "--mode",
            mode,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp)
        except subprocess.TimeoutExpired:
            print(f"!! {system} ({mode}) took more than 300 s; skipped", flush=True)
            return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n    ".join(done.stderr.strip().splitlines()[-5:])
        print(f"!! {system} ({mode}) failed (exit {done.returncode}):\n    {tail}", flush=True)
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- report ----------------------------------------------------------------------------------------


def per_step(samples: list[dict[str, float]], n: int) -> list[float]:
    return [(s["workflow_s"] - s["loop_s"]) / n for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per workflow (N)")
    parser.add_argument("--reps", type=int, default=15, help="workflows measured per system")
    parser.add_argument(
        "--defaults-reps",
        type=int,
        default=5,
        help="repetitions for the competitors as shipped (DBOS's rollback journal is slow)",
    )
    parser.add_argument("--no-compare", action="store_true", help="measure Keel only")
    args = parser.parse_args()
    n, reps = args.steps, args.reps
    began = time.perf_counter()

    rows: list[tuple[str, list[float]]] = []
    notes: list[str] = []
    print(f"Keel: {reps} workflows of {n} steps per measurement ...", flush=True)
    keel = measure_keel(n, reps)
    rows.append(("keel: governed step (run.tool → gateway → audit)", keel["governed"]))
    rows.append(("keel: journal only (step bookkeeping, gateway bypassed)", keel["journal"]))
    rows.append(("keel: replay of a recorded step (resume)", keel["replay"]))
    parts = measure_parts(2000, n)

    if not args.no_compare:
        path = venv_path()
        for mode in ("same", "defaults"):
            for system in COMPARE:
                python = ensure_venv(path, system)
                if python is None:
                    continue
                count = reps if mode == "same" else max(1, args.defaults_reps)
                print(f"{COMPARE[system]['label']} ({MODES[mode]}) ...", flush=True)
                result = run_driver(python, system, mode, n, count)
                if result is None:
                    continue
                versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
                settings = [
                    f"{key}={result[key]}"
                    for key in ("durability", "journal_mode", "synchronous")
                    if key in result
                ]
                label = f"{COMPARE[system]['label']}, {MODES[mode]}"
                rows.append((label, per_step(result["samples"], n)))
                notes.append(f"{label}: {versions}; {', '.join(settings)}")

    report(rows, parts, notes, n, time.perf_counter() - began)


def report(
    rows: list[tuple[str, list[float]]],
    parts: dict[str, float],
    notes: list[str],
    n: int,
    seconds: float,
) -> None:
    governed = statistics.median(rows[0][1])
    journal = statistics.median(rows[1][1])
    width = max(len(name) for name, _ in rows)
    print(f"\nper-step overhead, N = {n} steps per workflow, file-backed SQLite")
    print(
        f"{'measurement':{width}}  {'p50 ms':>7}  {'mean ms':>7}  {'reps':>4}  "
        f"{'÷ keel governed':>15}  {'÷ keel journal':>14}"
    )
    for name, samples in rows:
        p50 = statistics.median(samples)
        print(
            f"{name:{width}}  {p50 * 1e3:7.3f}  {statistics.fmean(samples) * 1e3:7.3f}  "
            f"{len(samples):4d}  {p50 / governed:15.2f}  {p50 / journal:14.2f}"
        )
    print("\nparts of a governed step (medians):")
    for name, value in parts.items():
        print(f"  {name}: {value * 1e3:.3f} ms")
    if notes:
        print("\ncompared with:")
        for note in notes:
            print(f"  {note}")
    print(
        f"\nKeel's own step overhead (journal only): p50 {journal * 1e3:.3f} ms "
        f"(target ≤ 0.3 ms: {'met' if journal <= 0.0003 else 'NOT met'}); "
        f"a governed step: p50 {governed * 1e3:.3f} ms"
    )
    print(f"bench took {seconds:.0f} s")


if __name__ == "__main__":
    main()
