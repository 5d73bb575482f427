"""Loading KeelConfig from a YAML file and the environment (kept apart from the object itself).

Precedence, highest first: explicit overrides (CLI flags), environment (``KEEL_STORE_URL``,
``KEEL_HOME``, ``KEEL_POLICY_PATHS`` separated by the OS path separator), the YAML file, defaults.
Relative paths in a file are taken relative to the file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from keel.config import KeelConfig
from keel.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_FILE", "load_config"]

DEFAULT_CONFIG_FILE = "keel.yaml"
_ENV = {"KEEL_STORE_URL": "store_url", "KEEL_HOME": "home", "KEEL_POLICY_PATHS": "policy_paths"}


def _key_lines(text: str) -> dict[str, int]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}", context={"file": str(path)}
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"{path}:{line or '?'}: not valid YAML: {getattr(exc, 'problem', exc)}",
            context={"file": str(path), "line": line},
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the config file must be a mapping of settings", context={"file": str(path)}
        )
    lines = _key_lines(text)
    known = set(KeelConfig.model_fields)
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{path}:{lines.get(str(key), '?')}: unknown setting {key!r}; "
                f"known settings: {', '.join(sorted(known))}",
                context={"file": str(path), "line": lines.get(str(key)), "key": str(key)},
            )
    base = path.resolve().parent
    for key in ("home",):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    if isinstance(data.get("policy_paths"), list):
        data["policy_paths"] = [
            str(p if Path(p).is_absolute() else base / p) for p in data["policy_paths"]
        ]
    url = data.get("store_url")
    if isinstance(url, str) and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel != ":memory:":
            data["store_url"] = "sqlite:///" + str(base / rel)
    data["__lines__"] = lines
    return data


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> KeelConfig:
    """Build a KeelConfig. ``path=None`` reads ./keel.yaml if it exists."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    lines: dict[str, int] = {}
    if path is not None:
        data = _read_file(Path(path))
        lines = data.pop("__lines__", {})
        source = str(path)
    for var, key in _ENV.items():
        if env.get(var):
            data[key] = env[var].split(os.pathsep) if key == "policy_paths" else env[var]
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return KeelConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        line = lines.get(str(err["loc"][0])) if err["loc"] else None
        where = f"{source}:{line}" if line else source
        raise ConfigError(
            f"{where}: setting {key!r}: {err['msg']}",
            context={"file": source, "line": line, "key": key},
        ) from None
