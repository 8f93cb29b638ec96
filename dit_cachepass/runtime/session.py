"""A session is the cache state of one compiled module: the config, one ``LoopState`` per
loop and branch (shared by every graph dynamo compiles for that module), and what the pass
found in each graph (for ``explain``/``summary``). Where each call belongs (generation, step,
branch) is ``calls.CallTracker``'s part, which ``Session`` inherits."""

from __future__ import annotations

import copy
import logging
import pickle
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from ..config import DBCacheConfig, ParamsModifier, CalibratorConfig
from ..compiler.lower import CompileOptions, check_backend, warn_if_unverified
from .calls import Branch, CallTracker
from .state import LoopState

log = logging.getLogger("dit_cachepass")


_ATTR = "_dit_cachepass"  # the attribute of a compiled module that holds its Session


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


class Session(CallTracker):

    def __init__(self, config: Optional[DBCacheConfig] = None, *, backend: str = "inductor",
                 strict: bool = False, list_lengths: Optional[dict[str, int]] = None,
                 calibrator_config: Optional[CalibratorConfig] = None,
                 params_modifiers: Union[ParamsModifier, list[ParamsModifier], None] = None,
                 process_group: Any = None, compile_options: Optional[CompileOptions] = None):
        self.config = config if config is not None else DBCacheConfig()
        if not isinstance(self.config, DBCacheConfig):
            hint = {dict: ": build one from the dict, dcp.DBCacheConfig(**d)",
                    str: ": build one, e.g. dcp.DBCacheConfig(), dcp.FBCacheConfig() or dcp.DBPruneConfig()"
                    }.get(type(self.config), "")
            raise TypeError(f"cache_config must be a DBCacheConfig, got {type(self.config).__name__}{hint}")
        if calibrator_config is not None and not isinstance(calibrator_config, CalibratorConfig):
            raise TypeError("calibrator_config must be a TaylorSeerCalibratorConfig, FoCaCalibratorConfig or "
                            f"DMDCalibratorConfig, got {type(calibrator_config).__name__}")
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
        if compile_options is not None and not isinstance(compile_options, CompileOptions):
            raise TypeError(f"compile_options must be a CompileOptions, got {type(compile_options).__name__}")
        self.compile_options = compile_options if compile_options is not None else CompileOptions()
        if self.compile_options.inductor_patches() and backend != "inductor":
            warnings.warn(f"dit_cachepass: mode/options are Inductor settings; backend={backend!r} ignores them",
                          stacklevel=3)
        warn_if_unverified(self.compile_options, self.config.cache_type, calibrator_config is not None)
        self.strict = strict
        self.list_lengths = list_lengths
        self.states: dict[tuple[str, Branch], LoopState] = {}
        # per loop: the keys of the states its last two DBCache decisions used (expected_reference)
        self._recent: dict[str, tuple[Optional[tuple[str, Branch]], tuple[str, Branch]]] = {}
        self._zeros: Optional[torch.Tensor] = None  # the last layout's only: many resolutions keep one
        self.graphs: list[GraphReport] = []
        self.paths: Any = None  # paths.ModulePaths: graph path, capture-flag retry, block path
        self.notes: list[str] = []  # how the path was chosen (for explain / summary)
        self.runners: list[Any] = []  # one Runner per cached graph, newest last
        self.enabled = True  # False after dcp.disable on a torch.compile'd module: every call computes
        self._init_tracking()
        self._warned: set[str] = set()
        self.previous_forward = None
        self.previous_cache_context = None
        self.checked_first_forward = False

    # -- copies and pickles (``copy.deepcopy`` / ``torch.save`` of a dcp.compile'd module) --
    def settings(self) -> dict:
        """The arguments that built this session (no state): a copy compiles with these."""
        return dict(config=self.config, backend=self.backend, strict=self.strict, list_lengths=self.list_lengths,
                    calibrator_config=self.calibrator_config, params_modifiers=self.params_modifiers,
                    compile_options=self.compile_options)

    def __deepcopy__(self, memo: dict) -> "Session":
        """A fresh session with the same settings and decision group: no cache state, graphs,
        runners or compiled code are copied (the copied module caches on its own)."""
        new = Session(**copy.deepcopy(self.settings(), memo))
        memo[id(self)] = new
        new.process_group = self.process_group  # same process: the same ranks decide together
        new.previous_forward = copy.deepcopy(self.previous_forward, memo)
        new.previous_cache_context = copy.deepcopy(self.previous_cache_context, memo)
        return new

    def __reduce__(self) -> tuple:
        """Pickled as its settings only (compiled code and cached tensors are dropped); the
        unpickled module is compiled again on its first call, with a fresh state."""
        if self.process_group is not None:
            raise pickle.PicklingError(
                "dit_cachepass: a module compiled with a process group (parallel decisions) cannot be pickled; "
                "save module.state_dict() instead (or dcp.disable(module) before saving)")
        return (_session_from_settings, (self.settings(),),
                {"previous_forward": self.previous_forward, "previous_cache_context": self.previous_cache_context})

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

    def state(self, name: str, branch: Branch, config: DBCacheConfig,
              calibrator_config: Optional[CalibratorConfig]) -> LoopState:
        """One state per loop and branch. ``branch``: 0 = the cond (or only) branch, an int
        for a branch told apart by the timestep heuristic, a str for a named branch. While
        the call in progress is ``unsure``, a scratch state no later call sees (no reference:
        the middle computes, and what it stores is dropped)."""
        self.place()
        if self.unsure is not None:
            return LoopState(f"{name} [unsure]", config, calibrator_config)
        if config.enable_separate_cfg is False:  # asked for one state: named branches share it, as in cache-dit
            branch = 0
        key = (name, branch)
        if key not in self.states:
            label = state_label(name, branch)
            partner = self.states.get((name, 0)) if branch != 0 else None
            st = LoopState(label, config, calibrator_config, partner=partner)
            st.warn = self.warn_once
            self.states[key] = st  # new in this call: a restore drops it with the old dict
            return st
        st = self.states[key]
        self._touch(key, st)
        return st

    def note_state(self, name: str, branch: Branch) -> None:
        if self.config.enable_separate_cfg is False:
            branch = 0
        self._recent[name] = (self._recent[name][1] if name in self._recent else None, (name, branch))

    def expected_reference(self, name: str, like: Any) -> torch.Tensor:
        """The reference loop ``name``'s next DBCache decision is expected to compare against, fed
        to its Fn piece before the call's branch is known (``fold``): the state used two decisions
        ago when the last two alternated (CFG), else the last one's. The middle checks that it was
        the right tensor before it uses what the Fn piece computed with it. Without a usable
        guess: zeros of ``like``'s layout (the numerator is then not used). ``like``: a tensor of
        the reference's layout or its (shape, dtype, device)."""
        shape, dtype, device = (like.shape, like.dtype, like.device) if isinstance(like, torch.Tensor) else like
        prev, last = self._recent.get(name, (None, None))
        st = self.states.get(prev if prev is not None and prev != last else last) if last is not None else None
        buf = st.buffers.get(None) if st is not None else None
        ref = buf.reference if buf is not None else None
        if (ref is not None and ref.shape == shape and ref.dtype == dtype and ref.device == device
                and ref.is_contiguous()):
            return ref
        zeros = self._zeros
        if zeros is None or zeros.shape != shape or zeros.dtype != dtype or zeros.device != device:
            zeros = self._zeros = torch.zeros(shape, dtype=dtype, device=device)
        return zeros

    def _touch(self, key: tuple[str, Branch], st: LoopState) -> None:
        """Before a call first changes a loop state: keep its snapshot for ``abort_call``."""
        touched = self._snap[4] if self._snap is not None else None
        if touched is not None and key not in touched:
            touched[key] = st.snapshot()

    def refresh(self) -> None:
        """Start a new generation at the next call (and forget what the heuristics learnt)."""
        self._pending_reset = True

    # -- reporting ----------------------------------------------------------------------
    def no_loop(self, report: GraphReport) -> None:
        """A graph with nothing to cache. Glue-only graphs (from graph breaks outside the loop)
        are judged after the whole forward, in ``after_forward``; real reasons warn now."""
        from ..compiler.matcher import NO_BLOCK_LIST

        if report.reasons == [NO_BLOCK_LIST] and not report.skipped:
            return
        if self.paths is not None and not self.paths.decided:
            return  # another path may still cache the model: judged in after_forward
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

    def warn_once(self, msg: str, key: Optional[str] = None, distinct: bool = False) -> None:
        """Warn once per session and ``key`` (default: the message). Never raises, not even
        with strict=True: these warnings are about state, not about what can be cached.
        ``distinct``: shown for this session even if another session already showed the same
        text from the same place (Python's default filter shows that once per process); the
        warning filters still apply (``ignore`` / ``error`` / ``once``)."""
        key = msg if key is None else key
        if key in self._warned:
            return
        self._warned.add(key)
        if not distinct:
            warnings.warn(f"dit_cachepass: {msg}", stacklevel=4)
            return
        try:
            frame = sys._getframe(3)  # where warnings.warn(stacklevel=4) would point
        except ValueError:
            frame = sys._getframe(0)
        warnings.warn_explicit(f"dit_cachepass: {msg}", UserWarning, frame.f_code.co_filename, frame.f_lineno,
                               module=frame.f_globals.get("__name__", "dit_cachepass"),
                               registry={},  # a fresh per-location registry: not hidden by another session's
                               module_globals=frame.f_globals)

    def warn(self, msg: str) -> None:
        if self.strict:
            raise UnsupportedModelError(f"dit_cachepass: {msg} (strict=True)")
        warnings.warn(f"dit_cachepass: {msg}", stacklevel=4)

    def _uncached(self, reasons: list[str]) -> None:
        self.warn(f"running uncached: {'; '.join(reasons) or 'no block loop found'}")




def state_label(name: str, branch: Branch) -> str:
    """How summaries name a loop's state on a branch: the loop name, then the branch if not 0."""
    return name if branch == 0 else f"{name} [{branch}]" if isinstance(branch, str) else f"{name} [cfg branch {branch}]"


def _session_from_settings(settings: dict) -> Session:
    """Unpickling a ``Session``: a fresh one with the pickled settings."""
    return Session(**settings)
