"""Which path serves a compiled module, chosen on its first calls.

1. The graph path: dynamo captures the forward, the pass splits the graph (one compiled
   graph, zero recompiles). Most models stop here.
2. If the loop is broken across graphs (graph breaks), the capture is retried once with
   dynamo's ``capture_scalar_outputs`` / ``capture_dynamic_output_shape_ops`` switched on for
   this module's calls only (``.item()``, ``nonzero`` stay in the graph).
3. If still nothing is cached and the module has a top-level block list, the block path
   (``blockpath``): one eager call traced with hooks finds the lists and streams, then each
   block is wrapped and compiled regionally, with the same runtime and state.

Each probe call returns the model's exact, uncached output; the first steps of a generation
are warmup steps anyway. ``explain()`` reports the path a model takes and why.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from . import blockpath
from .lower import check_backend
from .session import GraphReport, Session

CAPTURE_FLAGS = dict(capture_scalar_outputs=True, capture_dynamic_output_shape_ops=True)
PATHS = ("auto", "graph", "block")


def check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"path={path!r} is invalid: expected one of {', '.join(PATHS)}.")
    return path


def graph_broken(graphs: list[GraphReport]) -> bool:
    """Nothing cached because dynamo split the forward (or lost blocks to a break)?"""
    return not any(g.loops for g in graphs) and (len(graphs) > 1 or any(
        "only blocks" in r or "graph break" in r for g in graphs for r in g.reasons))


def block_path_may_help(module: nn.Module, graphs: list[GraphReport]) -> bool:
    """Nothing cached, a top-level block list exists, and the graph path did not simply find
    a loop too short for the config (the block path would plan the same)."""
    if any(g.loops for g in graphs) or not blockpath.top_level_lists(module):
        return False
    return not (graphs and all(g.skipped and not g.reasons for g in graphs))


def block_path_report(module: nn.Module, session: Session, calls: list[blockpath.BlockCall]) -> GraphReport:
    """Match and plan the block lists of one traced eager call."""
    loops, reasons, notes = blockpath.match_block_calls(module, calls, session.config.loop_layout)
    plans, skipped = blockpath.plan_block_loops(loops, session)
    return GraphReport(len(calls), plans, reasons, notes, skipped)


def regional_compiler(backend: str) -> Callable[[nn.Module], Callable]:
    """Compile a block's forward once per block class (dynamo caches per code object and
    takes parameters as inputs), as diffusers' ``compile_repeated_blocks`` does."""
    check_backend(backend)

    def compile_block(block: nn.Module) -> Callable:
        fwd = block.__dict__.get("forward") or type(block).forward.__get__(block)
        return fwd if backend == "eager" else torch.compile(fwd, backend=backend, dynamic=False)
    return compile_block


class ModulePaths:
    """The callable behind a compiled module's forward: graph path, then the fallbacks."""

    def __init__(self, module: nn.Module, session: Session, make_forward: Callable[[], Callable],
                 compile_graph_path: Callable[[Callable], Callable], path: str = "auto"):
        self.module, self.session = module, session
        self.make_forward, self.compile_graph_path = make_forward, compile_graph_path
        self.path = check_path(path)
        self.stage = "block-pending" if path == "block" else "graph"
        self.eager = make_forward()
        self.compiled = compile_graph_path(make_forward()) if self.stage == "graph" else None
        self.runner: Optional[blockpath.BlockRunner] = None
        self.decided = path != "auto"

    @property
    def name(self) -> str:
        return {"graph": "graph", "flags": "graph (scalar/dynamic-output capture)",
                "block-pending": "block", "block": "block"}[self.stage]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.stage == "block":
            self.runner.begin_call()
            return self.eager(*args, **kwargs)
        if self.stage == "block-pending":
            return self._trace_blocks(args, kwargs)
        if self.stage == "flags":
            with torch._dynamo.config.patch(**CAPTURE_FLAGS):
                out = self.compiled(*args, **kwargs)
        else:
            out = self.compiled(*args, **kwargs)
        if not self.decided:
            self._next_path()
        return out

    def _next_path(self) -> None:
        s = self.session
        if any(g.loops for g in s.graphs):
            self.decided = True
            return
        if self.stage == "graph" and graph_broken(s.graphs):
            self.stage = "flags"
            self.compiled = self.compile_graph_path(self.make_forward())  # a fresh code object: a fresh capture
        elif block_path_may_help(self.module, s.graphs):
            self.stage = "block-pending"
        else:
            self.decided = True  # uncached; after_forward says why
            return
        s.notes.append(f"nothing cached on the {self._previous()} path; trying the {self.name} path")
        s.graphs, s.runners = [], []
        s.checked_first_forward = True  # not uncached yet: the next path decides

    def _previous(self) -> str:
        return "graph" if self.stage == "flags" else "graph (capture flags)"

    def _trace_blocks(self, args: tuple, kwargs: dict) -> Any:
        s = self.session
        self.decided = True
        out, calls = blockpath.trace_block_calls(self.module, lambda: self.eager(*args, **kwargs))
        try:
            report = block_path_report(self.module, s, calls)
        except Exception as err:  # noqa: BLE001 - never crash: later calls run uncached
            from .backend import StageError

            s.stage_failed(StageError("block-path match", err))
            self._back_to_graph()
            return out
        s.graphs.append(report)
        plans = report.loops
        if not plans:
            self._back_to_graph()
            s.checked_first_forward = False  # after_forward warns with the reasons
            return out
        self.runner = blockpath.BlockRunner(s, plans, regional_compiler(s.backend))
        self.stage = "block"
        for lp in plans:
            if lp.loop.never_cache:
                s.warn(f"loop {lp.name} always computes: {lp.loop.never_cache}")
        return out

    def _back_to_graph(self) -> None:
        """Nothing to cache: run compiled (uncached) from now on."""
        self.stage = "graph"
        self.compiled = self.compile_graph_path(self.make_forward())

    def uninstall(self) -> None:
        if self.runner is not None:
            self.runner.uninstall()

