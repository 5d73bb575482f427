"""Name patterns shared by the policy parsers: tool globs, rule/cap ids, argument names."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["ARG", "ARG_WHAT", "NAME", "NAME_WHAT", "TOOL_PATTERN", "TOOL_WHAT"]

TOOL_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:/@+*?-]+")
TOOL_WHAT: Final = (
    "a tool name or glob pattern (letters, digits, _ . : / @ + - and the wildcards * ?)"
)
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]*")
NAME_WHAT: Final = "a name (letters, digits and _ . : @ / + -, starting with a letter or digit)"
ARG: Final = re.compile(r"[A-Za-z0-9_$@-]+")
ARG_WHAT: Final = "an argument name (letters, digits and _ $ @ -)"
