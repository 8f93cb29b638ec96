"""A session is the cache state of one compiled module: the config, one ``LoopState`` per
loop (shared by every graph dynamo compiles for that module), generation tracking, and
what the pass found in each graph (for ``explain``/``summary``)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .config import DBCacheConfig, TaylorSeerCalibratorConfig
from .lower import check_backend
from .runtime.state import LoopState

log = logging.getLogger("dit_cachepass")


class UnsupportedModelError(RuntimeError):
    """Raised in strict mode when the pass finds nothing it can cache."""


@dataclass
class GraphReport:
    """What capture/match/plan found in one dynamo graph."""

    n_ops: int
    loops: list[Any]  # LoopPlan
    reasons: list[str]
    notes: list[str]
    skipped: list[str]
    pieces: list[Any] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return bool(self.loops)


class Session:
    def __init__(self, config: Optional[DBCacheConfig] = None, *, backend: str = "inductor",
                 strict: bool = False, list_lengths: Optional[dict[str, int]] = None,
                 calibrator_config: Optional[TaylorSeerCalibratorConfig] = None):
        self.config = config if config is not None else DBCacheConfig()
        if not isinstance(self.config, DBCacheConfig):
            raise TypeError(f"cache_config must be a DBCacheConfig, got {type(self.config).__name__}")
        if calibrator_config is not None and not isinstance(calibrator_config, TaylorSeerCalibratorConfig):
            raise TypeError("calibrator_config must be a TaylorSeerCalibratorConfig, got "
                            f"{type(calibrator_config).__name__}")
        self.calibrator_config = calibrator_config
        self.backend = check_backend(backend)
        self.strict = strict
        self.list_lengths = list_lengths
        self.states: dict[str, LoopState] = {}
        self.graphs: list[GraphReport] = []
        self.calls = 0  # transformer calls in the current generation
        self.generation = 0
        self._last_timestep: Optional[float] = None
        self._direction: Optional[int] = None
        self._pending_reset = False
        self.previous_forward = None
        self.checked_first_forward = False

    def __repr__(self) -> str:
        loops = ", ".join(self.states) or "none yet"
        cal = f", {self.calibrator_config.strify()}" if self.calibrator_config else ""
        return (f"Session({self.config.strify()}{cal}, backend={self.backend!r}, loops=[{loops}], "
                f"generation={self.generation}, calls={self.calls})")

    # -- state --------------------------------------------------------------------------
    def state(self, name: str) -> LoopState:
        if name not in self.states:
            self.states[name] = LoopState(name, self.config, self.calibrator_config)
        return self.states[name]

    def refresh(self) -> None:
        """Start a new generation at the next call."""
        self._pending_reset = True

    def observe_timestep(self, t: Any) -> None:
        if not (self.config.detect_new_generation and isinstance(t, torch.Tensor) and t.numel()):
            return
        value = float(t.reshape(-1)[0])
        last = self._last_timestep
        self._last_timestep = value
        if last is None or abs(value - last) <= 1e-6 * max(1.0, abs(value)):
            return  # first call, or the second CFG call of a step
        direction = 1 if value > last else -1
        if self._direction is None:
            self._direction = direction  # most schedulers count down; Lumina2 counts up
        elif direction != self._direction:
            self._pending_reset = True  # the timestep jumped back: a new generation

    def begin_call(self) -> None:
        n = self.config.num_inference_steps
        if self._pending_reset or (n is not None and self.calls >= n):
            self._new_generation()
        self.calls += 1

    def _new_generation(self) -> None:
        self._pending_reset = False
        self._direction = None
        if self.calls:
            self.generation += 1
            for s in self.states.values():
                s.new_generation()
        self.calls = 0

    # -- reporting ----------------------------------------------------------------------
    def no_loop(self, report: GraphReport) -> None:
        """A graph with nothing to cache. Glue-only graphs (from graph breaks outside the loop)
        are judged after the whole forward, in ``after_forward``; real reasons warn now."""
        from .matcher import NO_BLOCK_LIST

        if report.reasons == [NO_BLOCK_LIST] and not report.skipped:
            return
        self._uncached(report.reasons + report.skipped)

    def after_forward(self) -> None:
        """Once, after the first whole forward: say so if nothing in it was cached."""
        if self.checked_first_forward:
            return
        self.checked_first_forward = True
        if not self.graphs:
            self._uncached(["dynamo ran the forward without compiling it (recompile limit reached or "
                            "compilation disabled)"])
        elif not any(g.loops for g in self.graphs):
            self._uncached(list(dict.fromkeys(r for g in self.graphs for r in g.reasons + g.skipped)))

    def warn(self, msg: str) -> None:
        if self.strict:
            raise UnsupportedModelError(f"dit_cachepass: {msg} (strict=True)")
        warnings.warn(f"dit_cachepass: {msg}", stacklevel=4)

    def _uncached(self, reasons: list[str]) -> None:
        self.warn(f"running uncached: {'; '.join(reasons) or 'no block loop found'}")
