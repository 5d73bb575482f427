"""The demo, served: `keel serve --app keel.demo.workflows:demo_app` used end to end over HTTP by
an `openai` client (the proxy, the demo's models), a curl user (operator key; workflows and runs)
and the CLI (keys, tokens, worker, runs) — the issue's "done when"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from keel.demo.runner import prepare


def keel(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "keel.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "keel-demo"
    config = prepare(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "KEEL_DEMO_DIR": str(folder)}
    env.pop("KEEL_STORE_URL", None)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keel.cli",
            "serve",
            "--app",
            "keel.demo.workflows:demo_app",
            "--config",
            str(config),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "keel serve did not become ready"
            time.sleep(0.1)
        yield base, config
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_the_demo_over_http(demo_server: tuple[str, Path], tmp_path: Path) -> None:
    base, config = demo_server
    folder = config.parent
    # The CLI: an operator key and an agent token.
    created = json.loads(
        keel("keys", "create", "--name", "ops", "--role", "admin", "-c", str(config), cwd=tmp_path)
    )
    operator = {"Authorization": f"Bearer {created['key']}"}
    token = keel(
        "token", "mint", "--agent", "support-bot", "--tenant", "acme",
        "--scope", "models:invoke", "-c", str(config), cwd=tmp_path,
    ).strip()  # fmt: skip

    # An openai client: the demo's scripted models behind the proxy, by name and by tier.
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
    assert {m.id for m in client.models.list()} >= {"triage-small", "writer-medium", "small"}
    answer = client.chat.completions.create(
        model="triage-small",
        messages=[{"role": "user", "content": "I want a refund for my broken blender"}],
        max_tokens=40,
    )
    assert "refund" in (answer.choices[0].message.content or "")
    streamed = client.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "Where is my order?"}],
        max_tokens=40,
        stream=True,
    )
    assert "".join(c.delta.content or "" for e in streamed for c in e.choices)

    # A curl user: workflows, a run submitted, executed by a worker (the CLI), shown with steps.
    workflows = httpx.get(f"{base}/v1/workflows", headers=operator).json()["workflows"]
    assert {w["name"] for w in workflows} == {"support", "procurement"}
    request = json.loads((folder / "requests.json").read_text())[0]
    submitted = httpx.post(
        f"{base}/v1/workflows/procurement/runs",
        headers=operator,
        json={"input": request, "run_id": "http-run-1"},
    )
    assert submitted.status_code == 201, submitted.text
    keel(
        "worker", "--app", "keel.demo.workflows:demo_app", "--once", "-c", str(config),
        cwd=tmp_path, env={"KEEL_DEMO_DIR": str(folder)},
    )  # fmt: skip
    run = httpx.get(f"{base}/v1/runs/http-run-1", headers=operator).json()
    assert run["status"] in ("completed", "waiting", "escalated"), run
    assert run["steps"]
    listed = keel("runs", "list", "-c", str(config), cwd=tmp_path)
    assert "http-run-1" in listed
    records = httpx.get(
        f"{base}/v1/audit/records", headers=operator, params={"run_id": "http-run-1"}
    )
    assert records.status_code == 200, records.text
    assert records.json()["records"], "the run's calls are in the audit log"
