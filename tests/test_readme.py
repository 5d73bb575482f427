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


def test_readme_mcp_config_puts_keel_in_front_of_mcp_server_time(tmp_path: Path) -> None:
    """The five lines of 'In front of an MCP server', as a new user would use them."""
    import json
    import shutil

    import yaml

    section = README[README.index("## In front of an MCP server") :]
    snippet = re.search(r"```yaml\n(.*?)```", section, flags=re.S)
    assert snippet is not None
    lines = [line for line in snippet.group(1).splitlines() if line.strip()]
    assert len(lines) == 5
    config = yaml.safe_load(snippet.group(1))
    config.update({"store_url": "sqlite:///keel.db", "home": "home"})
    (tmp_path / "keel.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    keel = shutil.which("keel") or str(Path(sys.executable).with_name("keel"))
    out = subprocess.run(
        [keel, "mcp", "tools", "list", "--refresh"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )
    assert out.returncode == 0, out.stderr
    tools = {row["tool"]: row for row in map(json.loads, out.stdout.splitlines())}
    assert tools["get_current_time"]["usable"] and tools["convert_time"]["usable"]
