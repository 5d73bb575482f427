"""docs/policy.md is the policy format reference from keel.policy.document, kept in sync."""

from __future__ import annotations

from pathlib import Path

import keel.policy.document

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from src/keel/policy/document.py; edit the docstring there. -->\n\n"


def render() -> str:
    doc = keel.policy.document.__doc__ or ""
    return (
        HEADER
        + doc.strip()
        .replace(".. code-block:: yaml\n", "```yaml")
        .replace("\n\nThe seed's nested form", "\n```\n\nThe seed's nested form")
        + "\n"
    )


def test_policy_doc_is_current() -> None:
    path = ROOT / "docs" / "policy.md"
    expected = render()
    if not path.exists() or path.read_text(encoding="utf-8") != expected:
        raise AssertionError(
            "docs/policy.md is out of date; regenerate it with: "
            "python -c 'import tests.test_docs as t; t.write()'"
        )


def write() -> None:
    (ROOT / "docs" / "policy.md").write_text(render(), encoding="utf-8")
