"""``keel demo``: the showcase. Sample tickets, demo tools, a scripted agent and the report."""

from __future__ import annotations

from keel.demo.runner import DemoReport, run_demo

__all__ = ["DemoReport", "run_demo"]
