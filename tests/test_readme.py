"""The README's promises: it starts with the two commands, and its Python example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def test_readme_starts_with_exactly_two_commands() -> None:
    lang, body = BLOCKS[0]
    assert lang == "bash"
    first = README.index("```")
    assert README[:first].strip().startswith("# Keel")
    assert len(README[:first].strip().splitlines()) == 1, (
        "nothing but the title before the commands"
    )
    commands = body.strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("keel demo")
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = commands[1].split("&&")[-1].strip()
    lines = [line.strip().replace(" -q", "") for line in ci.splitlines()]
    assert test_command in lines, "CI must run the README's test command exactly as written"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = next(body for lang, body in BLOCKS if lang == "python")
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    env.pop("KEEL_STORE_URL", None)
    env.pop("KEEL_HOME", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "'order': 'A-1'" in lines[0]
    assert lines[1].startswith("approval_required ")
    assert lines[2].startswith("policy_denied ")
    assert lines[3] == "audit chain ok: True"
