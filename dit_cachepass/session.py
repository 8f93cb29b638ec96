"""A session is the cache state of one compiled module: the config, one ``LoopState`` per
loop (shared by every graph dynamo compiles for that module), generation tracking, and
what the pass found in each graph (for ``explain``/``summary``)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from .config import DBCacheConfig, ParamsModifier, CalibratorConfig
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
    MAX_CFG_BRANCHES = 4  # more calls than this with one timestep: not CFG

    def __init__(self, config: Optional[DBCacheConfig] = None, *, backend: str = "inductor",
                 strict: bool = False, list_lengths: Optional[dict[str, int]] = None,
                 calibrator_config: Optional[CalibratorConfig] = None,
                 params_modifiers: Union[ParamsModifier, list[ParamsModifier], None] = None,
                 process_group: Any = None):
        self.config = config if config is not None else DBCacheConfig()
        if not isinstance(self.config, DBCacheConfig):
            raise TypeError(f"cache_config must be a DBCacheConfig, got {type(self.config).__name__}")
        if calibrator_config is not None and not isinstance(calibrator_config, CalibratorConfig):
            raise TypeError("calibrator_config must be a TaylorSeerCalibratorConfig or FoCaCalibratorConfig, got "
                            f"{type(calibrator_config).__name__}")
        if not isinstance(strict, bool):
            hint = "; pass True or False, not a string" if isinstance(strict, str) else ""
            raise TypeError(f"strict={strict!r} is invalid: expected a bool, got {type(strict).__name__}{hint}")
        # checked again here, not only at construction: fields may have been assigned since
        self.config.validate()
        if calibrator_config is not None:
            calibrator_config.validate()
        if calibrator_config is not None and self.config.cache_type == "DBPrune":
            raise ValueError("calibrator_config with DBPruneConfig is not supported yet: use DBCacheConfig "
                             "for TaylorSeer, or drop the calibrator.")
        self.calibrator_config = calibrator_config
        # one ParamsModifier for every loop, or one per loop (graph order); kept as given
        self.params_modifiers = params_modifiers
        per_loop = [] if params_modifiers is None or isinstance(params_modifiers, ParamsModifier) \
            else list(params_modifiers)
        for k, pm in enumerate(per_loop):
            if not isinstance(pm, ParamsModifier):
                raise TypeError(f"params_modifiers[{k}] must be a ParamsModifier, got {type(pm).__name__}")
        for pm in [params_modifiers] if isinstance(params_modifiers, ParamsModifier) else per_loop:
            pm.validate()
        self.process_group = process_group  # ranks whose decisions must agree (sharded activations)
        self.backend = check_backend(backend)
        self.strict = strict
        self.list_lengths = list_lengths
        self.states: dict[tuple[str, int], LoopState] = {}
        self.graphs: list[GraphReport] = []
        self.runners: list[Any] = []  # one Runner per cached graph, newest last
        self.calls = 0  # transformer calls in the current generation
        self.steps = 0  # pipeline steps begun in the current generation
        self.branch = self.step = 0  # of the call in progress
        self._repeat = 0
        self.timestep_branches = True
        self.generation = 0
        self._last_timestep: Optional[float] = None
        self._direction: Optional[int] = None
        self._pending_reset = False
        self.previous_forward = None
        self.checked_first_forward = False

    def __repr__(self) -> str:
        loops = ", ".join(s.name for s in self.states.values()) or "none yet"
        cal = f", {self.calibrator_config.strify()}" if self.calibrator_config else ""
        return (f"Session({self.config.strify()}{cal}, backend={self.backend!r}, loops=[{loops}], "
                f"generation={self.generation}, calls={self.calls})")

    # -- state --------------------------------------------------------------------------
    def config_for(self, loop_index: int) -> tuple[DBCacheConfig, Optional[CalibratorConfig]]:
        """The config of the k-th loop (in graph order), ParamsModifier applied."""
        pm = self.params_modifiers
        if not isinstance(pm, ParamsModifier):
            if pm is None or loop_index >= len(pm):
                return self.config, self.calibrator_config
            pm = pm[loop_index]
        return pm.apply(self.config), pm.calibrator_config or self.calibrator_config

    def state(self, name: str, branch: int, config: DBCacheConfig,
              calibrator_config: Optional[CalibratorConfig]) -> LoopState:
        """One state per loop and CFG branch (branch 0 = the first call of a step)."""
        key = (name, branch)
        if key not in self.states:
            label = name if branch == 0 else f"{name} [cfg branch {branch}]"
            partner = self.states.get((name, 0)) if branch else None
            self.states[key] = LoopState(label, config, calibrator_config, partner=partner)
        return self.states[key]

    def refresh(self) -> None:
        """Start a new generation at the next call."""
        self._pending_reset = True

    def observe_timestep(self, t: Any) -> None:
        """Track the timestep: a repeat is another CFG branch of the same step; a jump
        against the schedule's direction is a new generation."""
        if not (isinstance(t, torch.Tensor) and t.numel()):
            return
        value = float(t.reshape(-1)[0])
        last = self._last_timestep
        self._last_timestep = value
        if last is not None and abs(value - last) <= 1e-6 * max(1.0, abs(value)):
            self._repeat += 1  # the next CFG call of the same step
            if self._repeat >= self.MAX_CFG_BRANCHES and self.timestep_branches:
                self.timestep_branches = False  # a constant timestep says nothing about CFG
                self.warn(f"the timestep input repeated {self._repeat + 1} times in a row; calls are no longer "
                          "split into CFG branches by timestep (set enable_separate_cfg to choose)")
            return
        self._repeat = 0
        if last is None or not self.config.detect_new_generation:
            return
        direction = 1 if value > last else -1
        if self._direction is None:
            self._direction = direction  # most schedulers count down; Lumina2 counts up
        elif direction != self._direction:
            self._pending_reset = True  # the timestep jumped back: a new generation

    def _branch(self) -> int:
        mode = self.config.enable_separate_cfg
        if mode is None:  # auto: the k-th call with the same timestep is branch k
            return self._repeat if self.timestep_branches else 0
        if mode:  # cache-dit's parity rule
            return (self.calls % 2) ^ int(self.config.cfg_compute_first)
        return 0

    def begin_call(self) -> None:
        """Called once per transformer call, before any piece runs: sets ``branch`` and
        ``step`` (the pipeline step, shared by the CFG branches of one step)."""
        branch = self._branch()
        if self._pending_reset or self._generation_done(branch):
            self._new_generation()
            branch = self._branch()
        if branch == 0 or self.steps == 0:
            self.steps += 1
        self.branch, self.step = branch, self.steps - 1
        self.calls += 1

    def _generation_done(self, branch: int) -> bool:
        """Have ``num_inference_steps`` pipeline steps run (CFG branches of a step count once)?"""
        n = self.config.num_inference_steps
        if n is None:
            return False
        if self.config.enable_separate_cfg:  # parity mode: exactly two calls per step
            return self.calls >= 2 * n
        return branch == 0 and self.steps >= n

    def _new_generation(self) -> None:
        self._pending_reset = False
        self._direction = None
        if self.calls:
            self.generation += 1
            for s in self.states.values():
                s.new_generation()
        self.calls = self.steps = 0

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

    def stage_failed(self, err: Exception, consequence: str = "this graph runs uncached") -> None:
        """A stage of the pass raised. The error is the pass's, not the model's, so the
        generation goes on without what failed; ``strict=True`` raises instead."""
        if self.strict:
            raise UnsupportedModelError(f"dit_cachepass: {err} (strict=True)") from err
        log.debug("dit_cachepass stage failure", exc_info=err)
        warnings.warn(f"dit_cachepass: {err}; {consequence}. Please report it with the model class.",
                      stacklevel=4)

    def warn(self, msg: str) -> None:
        if self.strict:
            raise UnsupportedModelError(f"dit_cachepass: {msg} (strict=True)")
        warnings.warn(f"dit_cachepass: {msg}", stacklevel=4)

    def _uncached(self, reasons: list[str]) -> None:
        self.warn(f"running uncached: {'; '.join(reasons) or 'no block loop found'}")
