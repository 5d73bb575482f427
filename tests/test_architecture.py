"""The import direction of ARCHITECTURE.md, enforced on every module under src/keel."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "keel"

LAYERS: dict[str, int] = {
    "keel": 0,
    "keel.errors": 0,
    "keel.core": 0,
    "keel.canonical": 0,
    "keel.config": 0,
    "keel.configfile": 0,
    "keel.net": 0,
    "keel.store": 1,
    "keel.secrets": 1,
    "keel.identity": 2,
    "keel.policy": 2,
    "keel.audit": 2,
    "keel.tools": 2,
    "keel.ledger": 2,
    "keel.models": 2,
    "keel.approvals": 3,
    "keel.gateway": 3,
    "keel.telemetry": 3,
    "keel.app": 4,
    "keel.runtime": 4,
    "keel.testing": 4,
    "keel.mcp": 5,
    "keel.planning": 5,
    "keel.retrieval": 5,
    "keel.evals": 5,
    "keel.demo": 6,
    "keel.server": 6,
    "keel.cli": 6,
    "keel.__main__": 6,
}
#: Packages at the same layer that must not import each other.
SIBLINGS_ISOLATED = {2}
#: Same-layer imports that go one way only: the gateway uses approvals, never the reverse;
#: telemetry implements the gateway's observer interface, the gateway never imports it.
FORBIDDEN: dict[str, frozenset[str]] = {
    "keel.approvals": frozenset({"keel.gateway", "keel.telemetry"}),
    "keel.gateway": frozenset({"keel.telemetry"}),
}


def _owner(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in LAYERS and candidate != "keel":
            return candidate
    return "keel"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _imports(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                names.append(".".join([*base, node.module]))
            else:
                names.append(node.module)
    return [n for n in names if n == "keel" or n.startswith("keel.")]


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_point_down(module: str, path: Path) -> None:
    if module == "keel":
        return  # the package facade re-exports the public surface lazily
    owner = _owner(module)
    assert owner in LAYERS, f"{module} belongs to no layer; add it to ARCHITECTURE.md and LAYERS"
    layer = LAYERS[owner]
    for imported in _imports(path, module):
        target = _owner(imported)
        if target == owner or target == "keel":
            continue
        target_layer = LAYERS[target]
        assert target_layer <= layer, (
            f"{module} (layer {layer}) imports {imported} (layer {target_layer})"
        )
        assert target not in FORBIDDEN.get(owner, ()), f"{module} must not import {imported}"
        if target_layer == layer and layer in SIBLINGS_ISOLATED:
            pytest.fail(
                f"{module} imports its sibling {imported}; layer {layer} siblings are independent"
            )


def test_every_package_is_documented() -> None:
    text = (SRC.parents[1] / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for path in SRC.iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert f"`keel.{path.name}`" in text, f"keel.{path.name} has no line in ARCHITECTURE.md"
