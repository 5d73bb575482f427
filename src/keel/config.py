"""Keel's settings: one immutable object, documented per field. Loading is in ``keel.configfile``.

Only settings that the core needs live here; each later part adds a small settings object of its
own rather than growing this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["KeelConfig"]


class KeelConfig(BaseModel):
    """Settings of one Keel instance. Immutable; unknown keys are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_url: str = Field(
        "sqlite:///keel.db",
        description="Where Keel keeps its state: sqlite:///path.db (default) or sqlite:///:memory:.",
    )
    home: Path = Field(
        Path(".keel"),
        description="Folder for keys, the redaction salt and the external audit anchor file.",
    )
    policy_paths: tuple[Path, ...] = Field(
        (), description="Policy YAML files (or folders of them) loaded at start."
    )
    token_issuer: str = Field("keel", description="The `iss` of agent tokens Keel mints.")
    token_audience: str = Field("keel", description="The `aud` agent tokens must carry.")
    token_ttl_seconds: int = Field(
        600, ge=60, le=900, description="Default agent token lifetime (1–15 minutes)."
    )
    token_leeway_seconds: int = Field(
        60, ge=0, le=60, description="Clock skew tolerated on exp/nbf/iat (at most 60 s)."
    )
    max_payload_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest accepted arguments or result, in bytes (1 MiB)."
    )
    max_json_depth: int = Field(64, gt=0, le=512, description="Deepest accepted JSON nesting.")
    idempotency_retention_seconds: int = Field(
        24 * 3600, gt=0, description="How long a completed idempotency key replays its outcome."
    )
    kill_switch_refresh_seconds: float = Field(
        0.25,
        gt=0,
        le=1.0,
        description="How stale this process's view of kill switches may be, in seconds.",
    )
    audit_checkpoint_every: int = Field(
        1000, gt=0, description="Sign an audit checkpoint after this many records."
    )
    audit_partitions: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Independent audit hash chains to spread appends over (records of one run "
        "share a chain). Default: 1 on SQLite, 8 on PostgreSQL, where appends to different "
        "chains run in parallel.",
    )
    models: dict[str, Any] = Field(
        default_factory=dict,
        description="Model providers, models, prices, router and cache (keel.runtime.modelconfig).",
    )
    audit_anchor_file: bool = Field(
        True, description="Also append signed checkpoints to <home>/audit-anchor.jsonl."
    )
