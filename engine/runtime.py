"""Run the real program (`__main__.py`) under the SDK's mock runtime, as `pulumi up` would."""

from __future__ import annotations

import asyncio
import json
import logging
import runpy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from engine.mocks import EngineMonitor

REPO = Path(__file__).resolve().parents[1]
PROJECT = "kube-hardway"


def stack_config(stack: str) -> dict[str, Any]:
    """The `kube-hardway:*` config of Pulumi.<stack>.yaml, keys without the namespace."""
    data = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {k.split(":", 1)[1]: v for k, v in (data.get("config") or {}).items()
            if k.startswith(f"{PROJECT}:")}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Run:
    def __init__(self, mocks: Any, logs: list[logging.LogRecord], outputs: dict[str, Any],
                 secret_outputs: frozenset[str] = frozenset()):
        self.mocks = mocks
        self.logs = logs
        self.outputs = outputs
        self.secret_outputs = secret_outputs    # what the CLI shows as [secret]

    @property
    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.logs if r.levelno >= logging.WARNING]


def run_program(config: dict[str, Any], mocks: Any, preview: bool = False, stack: str = "test",
                threads: int = 64, program: Callable[[], None] | None = None) -> Run:
    """Register every resource of `__main__.py` (or `program`) with `config`; raises what it raises."""
    pulumi.runtime.set_all_config(
        {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}, [])
    settings.ROOT.set(None)
    handler = _Collect()
    logger = logging.getLogger(f"kube-hardway-mock-engine-{id(handler)}")
    logger.addHandler(handler)
    logger.propagate = False
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview, logger=logger,
                             monitor=EngineMonitor(mocks))
    # The engine works on many resources at once; the SDK hands each registration to the loop's
    # default executor, which is only min(32, cpus + 4) threads wide.
    loop = _ensure_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))
    # A failed step also fails every Output derived from it; the failure is reported once, by
    # the caller, not again by each garbage-collected future.
    loop.set_exception_handler(
        lambda lp, ctx: None if "never retrieved" in ctx.get("message", "") else lp.default_exception_handler(ctx))

    def main() -> None:
        runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")

    async def run_to_quiescence() -> None:
        # On the first failure the SDK stops waiting, but the engine lets steps already under
        # way finish (and records them). Drain everything before reporting, so nothing from
        # this run is still running (or raising) when the next one starts.
        try:
            await run_pulumi_func(program or main)
        finally:
            while True:
                pending = [t for t in [*settings.SETTINGS.rpc_manager.rpcs, *settings.SETTINGS.outputs]
                           if isinstance(t, asyncio.Future) and not t.done()]
                if not pending:
                    break
                await asyncio.wait(pending)
            for task in [*settings.SETTINGS.rpc_manager.rpcs, *settings.SETTINGS.outputs]:
                if isinstance(task, asyncio.Future) and task.done() and not task.cancelled():
                    task.exception()  # retrieved: the failure is reported once, by the caller
            settings.SETTINGS.rpc_manager.clear()
            settings.SETTINGS.outputs.clear()

    try:
        _sync_await(run_to_quiescence())
    finally:
        loop.set_default_executor(ThreadPoolExecutor(max_workers=4))
    root = settings.get_root_resource()
    exported = dict(getattr(root, "outputs", {}) or {})
    outputs = {k: _sync_await(pulumi.Output.from_input(v).future()) for k, v in exported.items()}
    secret = frozenset(k for k, v in exported.items() if _sync_await(pulumi.Output.from_input(v).is_secret()))
    return Run(mocks, handler.records, outputs, secret)

