"""The runtime: what runs above the gateway. Model calls with routing now; durable runs next."""

from __future__ import annotations

from keel.runtime.models import ModelCaller, ModelCatalog, ModelOutcome, ModelTarget, Targets

__all__ = ["ModelCaller", "ModelCatalog", "ModelOutcome", "ModelTarget", "Targets"]
