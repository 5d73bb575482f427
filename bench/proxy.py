"""Proxy overhead: the same load direct to a fake upstream, through Keel, and through LiteLLM.

    python bench/proxy.py                  # 2,000 timed requests per measurement (≈ 8 min)
    python bench/proxy.py --quick          # smoke run: 200 requests, 1 Keel worker (≈ 4 min)
    python bench/proxy.py --skip-litellm --workers 1 2 --requests 5000
    python bench/proxy.py --breakdown --cprofile 30   # also: where a proxied call's time goes

One run, one machine, one fake upstream. Every measurement is a separate load-generator process
(``bench/_loadgen.py``: raw asyncio, HTTP/1.1 keep-alive, N connections in a closed loop) that
sends ``--warmup`` untimed requests, then ``--requests`` timed ones, at concurrency 1 and 8.

**Model calls** (``POST /v1/chat/completions``, one OpenAI chat request of 128 max tokens):

- *upstream direct*: the fake upstream (``bench/_proxy_upstream.py``, raw asyncio, pre-encoded
  answers of about 700 bytes with ``usage``): the floor.
- *plain FastAPI forwarder*: the server stack ``keel serve`` runs on (FastAPI on uvicorn, httpx
  to the upstream), forwarding with no governance (``bench/_proxy_app.py:plain``).
- *Keel*: ``keel serve --app bench._proxy_app:app`` with ``--workers 1`` and ``2``, every
  governance step on: agent token (Ed25519 JWT, ``Authorization: Bearer``), policy (the model is
  allowlisted), rate limit and two budget caps (a ledger reservation before the call, settled
  from the upstream's ``usage`` after), redaction of prompts and answers (the proxy's default),
  one hash-chained audit record per call, SQLite WAL store.
  The upstream is a ``models:`` provider of type ``openai`` with its key in
  ``$BENCH_UPSTREAM_KEY``. If the route answers 404 (a Keel without the OpenAI-compatible proxy),
  the Keel rows are skipped with that reason.
- *LiteLLM*: ``litellm --config`` (proxy, no database, ``LITELLM_LOCAL_MODEL_COST_MAP=True``, a
  master key) in its own virtualenv (``--litellm-venv``, created on first use from
  ``bench/requirements-litellm.txt``; ``--skip-litellm`` to leave it out), with the same upstream
  as an ``openai/`` model.

**Tool calls** (``POST /v1/calls`` with ``orders.lookup``): the same function served three ways:
*direct*, a plain HTTP route of the raw asyncio upstream (parse JSON, call, encode: the floor of
any tool behind HTTP); *plain FastAPI*, an ``async def`` route on Keel's server stack; and *Keel*
``/v1/calls`` with the same governance (token, scope, policy, rate limit, cap, audit).

Targets (issue 6): Keel adds ≤ 2 ms p50 at concurrency 1, and serves ≥ 10× LiteLLM's requests/s
at concurrency 8; the same for ``/v1/calls`` against the direct tool call (its throughput is
compared with LiteLLM's chat figure, LiteLLM having no tool endpoint). Checks: every answer 200;
the upstream received every proxied request with its own key (never the caller's token); Keel's
answers are OpenAI chat completions; Keel wrote one audit record and one settled ledger
reservation per governed request, and its audit chain verifies. The exit status is non-zero
only when a check fails, never for a missed target.

``--breakdown`` then times each layer of a proxied call and of a tool call in this process,
without an HTTP server (``bench/_proxy_breakdown.py``): the bare httpx POST, Keel's provider, the
governed call, the route through the ASGI app, and the plain forwarder; ``--cprofile N`` adds a
cProfile of the route.

"server CPU ms/req" is the CPU time of the server's processes (the proxy, or the upstream for
the direct rows) during the whole measurement (warm-up included) over its requests. The machine
has 2 cores shared by the load generator, the proxy and the upstream, so throughput at
concurrency 8 is bounded by the sum of their CPU costs per request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import cpu_seconds, descendants, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LITELLM_VERSION = "1.109.1"
LITELLM_REQUIREMENTS = HERE / "requirements-litellm.txt"
DEFAULT_LITELLM_VENV = HERE / ".venv-litellm"
ADDED_P50_TARGET_MS = 2.0
THROUGHPUT_TARGET = 10.0  # × LiteLLM's requests/s at concurrency 8
MODEL = "gpt-4o-mini"
AGENT = "bench-agent"
TENANT = "acme"

CHAT_BODY = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful support agent for an online shop."},
        {"role": "user", "content": "Where is my order ORD-1001? It was due yesterday."},
    ],
    "max_tokens": 128,
}
TOOL_BODY = {"tool": "orders.lookup", "arguments": {"order_id": "ORD-1001"}}

POLICY = """\
policy: proxy-bench
scope: {tenant: acme}
tools: {allow: [orders.lookup]}
models: {allow: [gpt-4o-mini]}
caps:   # high enough never to trip; every call still reserves and settles against them
  - {id: model-spend-per-agent-day, models: ["*"], per: [agent], window: day, max_usd: 1000000, max_tokens: 100000000000}
  - {id: tool-calls-per-agent-day, tools: ["*"], per: [agent], window: day, max_calls: 1000000000}
rate_limits:
  - {id: agent-calls, scope: agent, requests: 10000000, per: 1s}
"""

KEEL_CONFIG = """\
store_url: sqlite:///keel.db
home: home
policy_paths: [policy.yaml]
models:
  providers:
    upstream: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", api_key_env: BENCH_UPSTREAM_KEY, max_attempts: 1}}
  models:
    {model}: {{provider: upstream}}
  prices:
    "upstream:*": {{input: 0.15, output: 0.6}}
"""

LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{port}/v1
      api_key: os.environ/BENCH_UPSTREAM_KEY
general_settings:
  master_key: {master_key}
"""


def log(message: str = "") -> None:
    print(message, flush=True)


# -- processes ----------------------------------------------------------------------------------


class Server:
    """A subprocess in its own process group; stopped (group SIGTERM, then SIGKILL) on exit."""

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
            stdin=subprocess.PIPE,
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

    def wait_ready(self, url: str, timeout: float, ok: tuple[int, ...] = (200,)) -> str | None:
        """None once ``url`` answers one of ``ok``; else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}"
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status in ok:
                        return None
            except urllib.error.HTTPError as exc:
                if exc.code in ok:
                    return None
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        return f"{self.name} did not answer {url} within {timeout:.0f} s:\n{self.tail()}"

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
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()


def start_upstream(tmp: Path, key: str) -> tuple[Server, int]:
    log_path = tmp / "upstream.log"
    server = Server(
        "fake upstream",
        [sys.executable, str(HERE / "_proxy_upstream.py"), "--key", key],
        dict(os.environ),
        tmp,
        log_path,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = log_path.read_text() if log_path.exists() else ""
        if text.strip():
            return server, int(json.loads(text.splitlines()[0])["port"])
        if server.proc.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise SystemExit(f"the fake upstream did not start:\n{server.tail()}")


def http_json(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# -- measurements -------------------------------------------------------------------------------


@dataclass
class Row:
    kind: str  # "chat" | "tool"
    target: str
    concurrency: int
    figures: dict[str, Any] = field(default_factory=dict)
    cpu_ms: float = float("nan")
    skipped: str = ""

    @property
    def p50(self) -> float:
        return float(self.figures.get("p50_ms", float("nan")))

    @property
    def rate(self) -> float:
        return float(self.figures.get("req_per_s", 0.0))


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.rows: list[Row] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.deadline = time.monotonic() + args.max_minutes * 60
        (tmp / "chat.json").write_text(json.dumps(CHAT_BODY))
        (tmp / "tool.json").write_text(json.dumps(TOOL_BODY))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)
            log(f"  CHECK FAILED: {problem}")

    def measure(
        self,
        kind: str,
        target: str,
        port: int,
        path: str,
        headers: list[str],
        concurrency: int,
        server_pids: list[int],
    ) -> Row:
        row = Row(kind, target, concurrency)
        self.rows.append(row)
        budget = min(self.args.request_timeout, self.remaining())
        if budget < 5:
            row.skipped = "the run's time limit (--max-minutes) was reached"
            log(f"  {target} c={concurrency}: skipped, {row.skipped}")
            return row
        argv = [
            sys.executable,
            str(HERE / "_loadgen.py"),
            "--port",
            str(port),
            "--path",
            path,
            "--body-file",
            str(self.tmp / f"{kind}.json"),
            "--requests",
            str(self.args.requests),
            "--warmup",
            str(self.args.warmup),
            "--concurrency",
            str(concurrency),
            "--timeout",
            str(budget),
        ]
        for header in headers:
            argv += ["--header", header]
        before = cpu_seconds(server_pids)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=budget + 30)
        spent = cpu_seconds(server_pids) - before
        if done.returncode != 0:
            row.skipped = f"load generator failed: {done.stderr.strip()[-300:]}"
            self.check(False, f"{target} c={concurrency}: {row.skipped}")
            return row
        row.figures = json.loads(done.stdout)
        sent = self.args.requests + self.args.warmup
        row.cpu_ms = spent / sent * 1e3
        statuses = row.figures["statuses"]
        self.check(
            set(statuses) <= {"200"} and not row.figures["errors"],
            f"{target} c={concurrency}: answers {statuses}, {row.figures['errors']} connection "
            f"errors {row.figures['error_sample']}; first body: {row.figures['first_body'][:300]}",
        )
        if row.figures["timed_out"]:
            self.notes.append(
                f"{target} c={concurrency}: stopped after {budget:.0f} s with "
                f"{row.figures['requests']} of {self.args.requests} timed requests"
            )
        log(
            f"  {target:34} c={concurrency}  p50 {row.p50:7.2f} ms  p99 "
            f"{row.figures['p99_ms']:7.2f} ms  {row.rate:8,.0f} req/s  server CPU "
            f"{row.cpu_ms:6.2f} ms/req"
        )
        return row

    def skip(self, kind: str, target: str, reason: str) -> None:
        for concurrency in self.args.concurrency:
            self.rows.append(Row(kind, target, concurrency, skipped=reason))


def upstream_counts(port: int) -> dict[str, int]:
    status, counts = http_json(f"http://127.0.0.1:{port}/stats")
    assert status == 200, counts
    return dict(counts)


def answered(rows: list[Row]) -> int | None:
    """Requests these measurements got answers to (warm-up included); None if one timed out."""
    if any(row.figures.get("timed_out") for row in rows):
        return None
    return sum(row.figures.get("completed", 0) for row in rows)


def check_upstream_count(
    bench: Bench, label: str, rows: list[Row], before: dict[str, int], after: dict[str, int]
) -> None:
    """The upstream got exactly one request with its own key per answered request, none without."""
    expected = answered(rows)
    got = after["chat_ok"] - before["chat_ok"]
    if expected is not None:
        bench.check(
            got == expected,
            f"{label}: the upstream counted {got} requests with its key for {expected} answered "
            "(a response cache or a retry would change this)",
        )
    bad = after["chat_bad_key"] - before["chat_bad_key"]
    bench.check(bad == 0, f"{label}: the upstream got {bad} requests without its key")


def bench_direct(bench: Bench, upstream: Server, port: int, key: str) -> None:
    log("\n== upstream direct (the floor) ==")
    pids = upstream.pids()
    for concurrency in bench.args.concurrency:
        bench.measure(
            "chat",
            "upstream direct",
            port,
            "/v1/chat/completions",
            [f"Authorization: Bearer {key}"],
            concurrency,
            pids,
        )
    for concurrency in bench.args.concurrency:
        bench.measure(
            "tool", "direct (raw HTTP route)", port, "/tool/orders.lookup", [], concurrency, pids
        )


def bench_plain(bench: Bench, up_port: int, key: str) -> None:
    log("\n== plain FastAPI on uvicorn, no governance (Keel's server stack) ==")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "BENCH_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
        "BENCH_UPSTREAM_KEY": key,
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "bench._proxy_app:plain"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = Server("plain FastAPI", argv, env, bench.tmp, bench.tmp / "plain.log")
    try:
        problem = server.wait_ready(f"http://127.0.0.1:{port}/docs", 60)
        if problem:
            bench.check(False, problem)
            bench.skip("chat", "plain FastAPI forwarder", problem)
            bench.skip("tool", "plain FastAPI route", problem)
            return
        before = upstream_counts(up_port)
        pids = server.pids()
        rows = [
            bench.measure(
                "chat", "plain FastAPI forwarder", port, "/v1/chat/completions", [], c, pids
            )
            for c in bench.args.concurrency
        ]
        check_upstream_count(bench, "plain forwarder", rows, before, upstream_counts(up_port))
        for concurrency in bench.args.concurrency:
            bench.measure("tool", "plain FastAPI route", port, "/v1/calls", [], concurrency, pids)
    finally:
        server.stop()


def keel_env(tmp: Path, key: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "KEEL_CONFIG": str(tmp / "keel.yaml"),
        "BENCH_UPSTREAM_KEY": key,
    }


def mint_token(tmp: Path, env: dict[str, str]) -> str:
    argv = [sys.executable, "-m", "keel.cli", "token", "mint", "--agent", AGENT]
    argv += ["--tenant", TENANT, "--scope", "models:invoke", "--scope", "orders:read"]
    argv += ["-c", str(tmp / "keel.yaml"), "--ttl", "900"]
    done = subprocess.run(argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"keel token mint failed: {done.stderr.strip()}")
    return done.stdout.strip()


def bench_keel(bench: Bench, up_port: int, key: str) -> None:
    tmp = bench.tmp / "keel"
    tmp.mkdir()
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "keel.yaml").write_text(KEEL_CONFIG.format(port=up_port, model=MODEL))
    env = keel_env(tmp, key)
    governed = 0  # requests that went through the gateway (each: one audit record)
    exact = True  # False if a measurement was cut short: requests in flight then are unknown
    for workers in bench.args.workers:
        label = f"Keel, {workers} worker{'s' if workers > 1 else ''}"
        log(f"\n== {label} (keel serve --workers {workers}; token, policy, caps, audit) ==")
        if bench.remaining() < 30:
            bench.skip("chat", label, "the run's time limit (--max-minutes) was reached")
            bench.skip("tool", label + " /v1/calls", "the run's time limit was reached")
            continue
        port = free_port()
        argv = [sys.executable, "-m", "keel.cli", "serve", "--app", "bench._proxy_app:app"]
        argv += ["-c", str(tmp / "keel.yaml"), "--port", str(port), "--workers", str(workers)]
        argv += ["--log-level", "warning"]
        server = Server(label, argv, env, tmp, tmp / f"serve-{workers}.log")
        try:
            problem = server.wait_ready(f"http://127.0.0.1:{port}/readyz", 90)
            if problem:
                bench.check(False, problem)
                bench.skip("chat", label, problem)
                bench.skip("tool", label + " /v1/calls", problem)
                continue
            if workers > 1:  # let every worker finish starting before the clock runs
                time.sleep(2.0)
            token = mint_token(tmp, env)
            auth = [f"Authorization: Bearer {token}"]
            pids = server.pids()
            for concurrency in bench.args.concurrency:
                row = bench.measure(
                    "tool", label + " /v1/calls", port, "/v1/calls", auth, concurrency, pids
                )
                governed += row.figures.get("completed", 0)
                exact = exact and not row.figures.get("timed_out")
                body = row.figures.get("first_body", "")
                bench.check(
                    not row.figures or '"order_id":"ORD-1001"' in body.replace(" ", ""),
                    f"{label} /v1/calls: unexpected answer {body[:200]}",
                )
            status, answer = http_json(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                CHAT_BODY,
                {"Authorization": f"Bearer {token}"},
            )
            if status == 404:
                reason = (
                    "POST /v1/chat/completions answered 404: this Keel has no OpenAI-compatible "
                    "proxy route yet (src/keel/server/proxy.py)"
                )
                log(f"  {label}: model rows skipped: {reason}")
                bench.skip("chat", label, reason)
                bench.notes.append(reason)
                continue
            governed += 1
            if status != 200 or not isinstance(answer, dict) or "choices" not in answer:
                reason = f"POST /v1/chat/completions answered {status}: {str(answer)[:300]}"
                bench.check(False, f"{label}: {reason}")
                bench.skip("chat", label, reason)
                continue
            before = upstream_counts(up_port)
            rows = []
            for concurrency in bench.args.concurrency:
                row = bench.measure(
                    "chat", label, port, "/v1/chat/completions", auth, concurrency, pids
                )
                rows.append(row)
                governed += row.figures.get("completed", 0)
                exact = exact and not row.figures.get("timed_out")
                body = row.figures.get("first_body", "")
                bench.check(
                    not row.figures
                    or ('"chat.completion"' in body.replace(" ", "") and '"usage"' in body),
                    f"{label}: the answer is not an OpenAI chat completion: {body[:300]}",
                )
            check_upstream_count(bench, label, rows, before, upstream_counts(up_port))
        finally:
            server.stop()
    check_keel_store(bench, tmp, env, governed if exact else None)


def check_keel_store(bench: Bench, tmp: Path, env: dict[str, str], governed: int | None) -> None:
    """One audit record and one settled ledger reservation per governed request; chain verifies.
    ``governed`` is None when a measurement was cut short: then only the chain is checked."""
    if not (tmp / "keel.db").exists():
        return
    sys.path.insert(0, str(ROOT))
    os.environ["BENCH_UPSTREAM_KEY"] = env["BENCH_UPSTREAM_KEY"]
    from keel import App
    from keel.configfile import load_config

    with App(load_config(tmp / "keel.yaml")) as keel:
        records = keel.store.read_one("SELECT count(*) FROM audit_records WHERE kind = 'call'")
        settled = keel.store.read_one(
            "SELECT count(*) FROM ledger_reservations WHERE status = 'settled'"
        )
        report = keel.verify_audit()
    n_records = int(records[0]) if records else 0
    n_settled = int(settled[0]) if settled else 0
    answered = "an unknown number of" if governed is None else f"{governed:,}"
    log(
        f"\nKeel store: {n_records:,} call audit records, {n_settled:,} settled ledger "
        f"reservations, for {answered} governed requests; audit chain: {report.summary()}"
    )
    if governed is not None:
        bench.check(n_records == governed, f"Keel: {n_records} audit records for {governed} calls")
        bench.check(n_settled == governed, f"Keel: {n_settled} settled reservations for {governed}")
    bench.check(report.ok, f"Keel: audit verification failed: {report.summary()}")


# -- LiteLLM ------------------------------------------------------------------------------------


def litellm_ready(venv: Path) -> str | None:
    """None if ``venv`` has the pinned LiteLLM with its proxy; else what is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no virtualenv at {venv}"
    probe = (
        "import importlib.metadata as m, fastapi, uvicorn, litellm.proxy.proxy_server;"
        "print(m.version('litellm'))"
    )
    done = subprocess.run(
        [str(python), "-c", probe],
        capture_output=True,
        text=True,
        timeout=180,
        env={**litellm_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    if done.returncode != 0:
        return f"LiteLLM's proxy does not import: {done.stderr.strip()[-300:]}"
    if done.stdout.strip() != LITELLM_VERSION:
        return f"LiteLLM {done.stdout.strip()} installed, {LITELLM_VERSION} wanted"
    return None


def ensure_litellm(venv: Path) -> str | None:
    """Create ``venv`` with LiteLLM's proxy if needed. None when ready; else why not."""
    missing = litellm_ready(venv)
    if missing is None:
        return None
    log(f"LiteLLM: {missing}; installing it into {venv} (a few minutes) ...")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "-r", str(LITELLM_REQUIREMENTS)],
        [*pip, "--no-deps", f"litellm=={LITELLM_VERSION}"],
    ]
    for argv in steps:
        if argv[1:3] == ["-m", "venv"] and (venv / "bin" / "python").exists():
            continue
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=1200, env=litellm_env()
            )
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv[:6])} took over 20 min"
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
            return f"{' '.join(argv[:6])} failed: {' '.join(errors)[-500:] or done.stderr[-500:]}"
    return litellm_ready(venv)


def litellm_env() -> dict[str, str]:
    """This environment without what belongs to Keel's interpreter or could give LiteLLM a DB."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTUAL_ENV", "PYTHON", "DATABASE_URL", "KEEL_"))
    }


def bench_litellm(bench: Bench, up_port: int, key: str) -> None:
    label = f"LiteLLM {LITELLM_VERSION} proxy"
    log(f"\n== {label} (no database, local cost map, master key) ==")
    venv = Path(bench.args.litellm_venv).resolve()
    problem = ensure_litellm(venv)
    if problem is not None:
        reason = f"LiteLLM unavailable: {problem}"
        log(f"  skipped: {reason}")
        bench.notes.append(reason)
        bench.skip("chat", label, reason)
        return
    tmp = bench.tmp / "litellm"
    tmp.mkdir()
    master = "sk-bench-master-" + secrets.token_hex(8)
    config = LITELLM_CONFIG.format(model=MODEL, port=up_port, master_key=master)
    (tmp / "config.yaml").write_text(config)
    port = free_port()
    env = litellm_env()
    env.update(
        {
            "BENCH_UPSTREAM_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True",
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    argv = [str(venv / "bin" / "litellm"), "--config", str(tmp / "config.yaml")]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    server = Server(label, argv, env, tmp, tmp / "litellm.log")
    try:
        problem = server.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", 300)
        if problem is None:
            status, answer = http_json(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                CHAT_BODY,
                {"Authorization": f"Bearer {master}"},
            )
            if status != 200:
                problem = f"a first request answered {status}: {str(answer)[:300]}"
        if problem is not None:
            reason = f"LiteLLM did not serve: {problem}"
            log(f"  skipped: {reason}")
            bench.notes.append(reason.splitlines()[0])
            bench.skip("chat", label, reason.splitlines()[0])
            return
        before = upstream_counts(up_port)
        pids = server.pids()
        auth = [f"Authorization: Bearer {master}"]
        rows = [
            bench.measure("chat", label, port, "/v1/chat/completions", auth, c, pids)
            for c in bench.args.concurrency
        ]
        check_upstream_count(bench, "LiteLLM", rows, before, upstream_counts(up_port))
    finally:
        server.stop()


# -- where the time goes ------------------------------------------------------------------------


def bench_breakdown(bench: Bench, up_port: int, key: str) -> None:
    """Each layer of a proxied call and of a tool call timed in this process (no HTTP server)."""
    tmp = bench.tmp / "breakdown"
    tmp.mkdir()
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "keel.yaml").write_text(KEEL_CONFIG.format(port=up_port, model=MODEL))
    os.environ.update(
        {
            "KEEL_CONFIG": str(tmp / "keel.yaml"),
            "BENCH_UPSTREAM_KEY": key,
            "BENCH_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
        }
    )
    sys.path.insert(0, str(ROOT))
    from bench._proxy_breakdown import breakdown

    breakdown(
        up_port=up_port,
        key=key,
        agent=AGENT,
        tenant=TENANT,
        chat_body=CHAT_BODY,
        tool_body=TOOL_BODY,
        calls=bench.args.breakdown_calls,
        cprofile=bench.args.cprofile,
    )


# -- report -------------------------------------------------------------------------------------


def fmt(value: float, spec: str) -> str:
    return "—" if value != value else format(value, spec)  # NaN: not measured


def report(bench: Bench) -> None:
    args = bench.args
    floor = {
        (r.kind, r.concurrency): r.p50
        for r in bench.rows
        if r.target in ("upstream direct", "direct (raw HTTP route)") and not r.skipped
    }
    litellm = {
        r.concurrency: r.rate
        for r in bench.rows
        if r.target.startswith("LiteLLM") and not r.skipped and r.rate
    }
    for kind, title in (
        ("chat", "model calls: POST /v1/chat/completions"),
        ("tool", "tool calls: POST /v1/calls (orders.lookup)"),
    ):
        log(f"\n== {title}; {args.requests:,} timed requests after {args.warmup:,} warm-up ==")
        head = (
            f"{'target':40}  {'c':>2}  {'p50 ms':>7}  {'p99 ms':>7}  {'added p50':>9}  "
            f"{'req/s':>7}  {'× LiteLLM':>9}  {'server CPU ms/req':>17}"
        )
        log(head)
        for row in (r for r in bench.rows if r.kind == kind):
            if row.skipped:
                log(f"{row.target:40}  {row.concurrency:>2}  skipped: {row.skipped[:90]}")
                continue
            added = row.p50 - floor.get((kind, row.concurrency), float("nan"))
            ratio = row.rate / litellm[row.concurrency] if row.concurrency in litellm else None
            log(
                f"{row.target:40}  {row.concurrency:>2}  {row.p50:7.2f}  "
                f"{row.figures['p99_ms']:7.2f}  {fmt(added, '+9.2f'):>9}  {row.rate:7,.0f}  "
                f"{(f'{ratio:.1f}×' if ratio is not None else '—'):>9}  {fmt(row.cpu_ms, '17.2f')}"
            )
    log("\n== against the targets (issue 6) ==")
    reference = next(
        (r for r in bench.rows if r.target.startswith("LiteLLM") and r.concurrency == 8), None
    )
    for kind, floor_name in (("chat", "the upstream"), ("tool", "the direct tool route")):
        for row in bench.rows:
            if row.kind != kind or not row.target.startswith("Keel"):
                continue
            name = row.target + (" (model proxy)" if kind == "chat" else "")
            if row.skipped:
                if row.concurrency == min(args.concurrency):
                    log(f"{name}: not measured ({row.skipped[:100]})")
                continue
            if row.concurrency == 1:
                added = row.p50 - floor.get((kind, 1), float("nan"))
                log(
                    f"{name}: added p50 ≤ {ADDED_P50_TARGET_MS:g} ms at c=1 vs {floor_name}: "
                    f"{met(added <= ADDED_P50_TARGET_MS)} ({added:+.2f} ms)"
                )
            if row.concurrency != 8:
                continue
            if reference is None or reference.skipped or not reference.rate:
                log(
                    f"{name}: throughput ≥ {THROUGHPUT_TARGET:g}× LiteLLM at c=8: not judged "
                    f"(LiteLLM not measured); {row.rate:,.0f} req/s"
                )
                continue
            ratio = row.rate / reference.rate
            log(
                f"{name}: throughput ≥ {THROUGHPUT_TARGET:g}× LiteLLM at c=8: "
                f"{met(ratio >= THROUGHPUT_TARGET)} ({row.rate:,.0f} vs {reference.rate:,.0f} "
                f"req/s = {ratio:.1f}×; server CPU per request {row.cpu_ms:.2f} vs "
                f"{reference.cpu_ms:.2f} ms = {reference.cpu_ms / row.cpu_ms:.1f}× less)"
            )


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[7], sum(values)


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def machine_note(load_before: str, ticks: tuple[int, int]) -> str:
    steal, total = (now - then for now, then in zip(cpu_ticks(), ticks, strict=True))
    return (
        f"machine: {os.cpu_count()} CPUs; load average (1 min) {load_before} at the start, "
        f"{load_average()} at the end; CPU steal during the run {100 * steal / max(total, 1):.0f} %"
    )


def server_stacks(litellm_venv: Path) -> str:
    """Which event loop and HTTP parser each server's uvicorn can pick ('auto' prefers C ones)."""
    parts = []
    for name, python in (
        ("Keel", Path(sys.executable)),
        ("LiteLLM", litellm_venv / "bin" / "python"),
    ):
        if not python.exists():
            continue
        probe = "import importlib.util as u; print(bool(u.find_spec('uvloop')), bool(u.find_spec('httptools')))"
        env = litellm_env() if name == "LiteLLM" else dict(os.environ)
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env)
        if done.returncode == 0:
            uvloop, httptools = done.stdout.split()
            parts.append(
                f"{name}: {'uvloop' if uvloop == 'True' else 'asyncio loop'} + "
                f"{'httptools' if httptools == 'True' else 'h11'}"
            )
    return "; ".join(parts)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="keel-proxy-bench-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, help="timed requests per measurement (2000)")
    parser.add_argument("--warmup", type=int, help="untimed requests first (200)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 requests, 1 worker")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workers", type=int, nargs="+", help="keel serve --workers (1 2)")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--skip-plain", action="store_true", help="leave out the plain FastAPI rows"
    )
    parser.add_argument(
        "--litellm-venv",
        default=os.environ.get("KEEL_BENCH_LITELLM_VENV", str(DEFAULT_LITELLM_VENV)),
        help="virtualenv for LiteLLM (created if missing; default bench/.venv-litellm)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each layer in process (provider, gateway, route) without HTTP",
    )
    parser.add_argument("--breakdown-calls", type=int, default=1000, help="calls per layer")
    parser.add_argument(
        "--cprofile", type=int, default=0, metavar="N", help="with --breakdown: top N functions"
    )
    parser.add_argument("--max-minutes", type=float, default=30.0, help="time limit of the run")
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds per measurement at most"
    )
    args = parser.parse_args()
    args.requests = args.requests or (200 if args.quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (20 if args.quick else 200)
    args.workers = args.workers or ([1] if args.quick else [1, 2])
    began = time.perf_counter()
    load_before, ticks = load_average(), cpu_ticks()
    key = "sk-bench-upstream-" + secrets.token_hex(12)
    with workspace() as tmp:
        bench = Bench(args, tmp)
        upstream, up_port = start_upstream(tmp, key)
        try:
            bench_direct(bench, upstream, up_port, key)
            if not args.skip_plain:
                bench_plain(bench, up_port, key)
            bench_keel(bench, up_port, key)
            if args.skip_litellm:
                bench.notes.append("LiteLLM skipped (--skip-litellm)")
                bench.skip("chat", f"LiteLLM {LITELLM_VERSION} proxy", "--skip-litellm")
            else:
                bench_litellm(bench, up_port, key)
            counts = upstream_counts(up_port)
            if args.breakdown:
                bench_breakdown(bench, up_port, key)
        finally:
            upstream.stop()
        report(bench)
    log(f"\nupstream counters: {counts}")
    log(f"server stacks (uvicorn 'auto'): {server_stacks(Path(args.litellm_venv))}")
    log(machine_note(load_before, ticks))
    for note in bench.notes:
        log(f"note: {note}")
    if bench.problems:
        log("\nchecks: FAILED")
        for problem in bench.problems:
            log(f"  {problem}")
    else:
        log("\nchecks: OK (every answer 200, upstream key and counts, audit and ledger)")
    log(f"bench took {time.perf_counter() - began:.0f} s")
    if bench.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
