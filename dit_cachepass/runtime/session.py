"""A session is the cache state of one compiled module: the config, one ``LoopState`` per
loop (shared by every graph dynamo compiles for that module), generation tracking, and
what the pass found in each graph (for ``explain``/``summary``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import operator
import pickle
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

import torch

from ..config import DBCacheConfig, ParamsModifier, CalibratorConfig
from ..compiler.lower import CompileOptions, check_backend, warn_if_unverified
from .state import LoopState

log = logging.getLogger("dit_cachepass")


_ATTR = "_dit_cachepass"  # the attribute of a compiled module that holds its Session
Branch = Union[int, str]  # 0: cond / only branch; int: heuristic CFG branch; str: named branch


def _scalar(t: Any) -> Optional[float]:
    """A timestep argument as one float: its largest element (None when there is none). Not the
    first: pipelines that give each frame its own timestep keep a conditioning frame's at 0
    (SanaImageToVideo's ``t * (1 - mask)``), and a constant first element reads as CFG repeats."""
    if isinstance(t, torch.Tensor):  # one op for the usual one-element timestep
        n = t.numel()
        return float(t.item()) if n == 1 else float(t.detach().reshape(-1).max()) if n else None
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    return None


class UnsupportedModelError(RuntimeError):
    """Raised in strict mode when the pass finds nothing it can cache."""


class ConcurrentCallError(RuntimeError):
    """A cached module called from two threads at once (its state follows one call sequence)."""


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


def _same_inputs(a: Any, b: Any) -> bool:
    """Whether two calls' arguments are equal by value (a retry builds its tensors afresh)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_inputs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # an object without a plain equality: not provably the same
        return a is b


class Session:
    MAX_CFG_BRANCHES = 4  # more calls than this with one timestep: not CFG

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
        self.calls = 0  # transformer calls in the current generation
        self.steps = 0  # pipeline steps begun in the current generation
        self.branch: Branch = 0  # of the call in progress
        self.step = 0
        self.unsure: Optional[str] = None  # why the call in progress computes without touching state
        self.generation = 0
        # explicit boundaries: generation scopes (pipeline calls, dcp.generation) and the active
        # branch context (diffusers' cache_context, dcp.branch): (name, step_index)
        self._scopes: list[Optional[int]] = []
        self._context: Optional[tuple[str, Optional[int]]] = None
        self._named_steps: dict[str, Optional[int]] = {}
        self._named_ts: dict[str, Optional[float]] = {}
        self._layouts: dict = {}  # branch -> its last call's input layout, in this generation
        # a bare call placed by the timestep heuristic raised: (its timestep, its arguments' ids);
        # the next call at that timestep is its retry only if it passes the same arguments
        self._aborted: Optional[tuple] = None
        self._suspect: Optional[float] = None  # a timestep whose calls compute: branches unknown
        self._ident: Optional[tuple] = None
        self._placed: Optional[tuple] = None
        self._index_base: Optional[int] = None
        self._lead: Optional[Branch] = None  # the branch whose calls begin a step
        # the timestep heuristic (bare-transformer use only)
        self._last_timestep: Optional[float] = None
        self._run = 0  # calls so far with the current timestep
        self._prev_run: Optional[int] = None  # calls the previous timestep got, in this generation
        self._direction: Optional[int] = None
        self._pending_reset = False
        self._depth = 0  # nesting of begin_call (forward wrapper, runners)
        self._owner: Optional[int] = None  # the thread of the call in progress
        self._scope_owner: Optional[int] = None  # the thread of the generation scopes open
        self._call_lock = threading.Lock()  # begin_call's check-and-set of _depth / _owner
        self._snap: Optional[tuple] = None
        self._pending: Optional[tuple] = None  # (timestep, branch context) of a call not yet placed
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
            label = name if branch == 0 else (f"{name} [{branch}]" if isinstance(branch, str)
                                               else f"{name} [cfg branch {branch}]")
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

    # -- explicit boundaries ------------------------------------------------------------
    @contextlib.contextmanager
    def generation_scope(self, num_inference_steps: Optional[int] = None) -> Iterator["Session"]:
        """Every call inside is a step of one new generation; the scope's end is a boundary too."""
        me = threading.get_ident()
        with self._call_lock:
            self._check_thread(me)
            self._scope_owner = me
            self._scopes.append(num_inference_steps)
        self._pending_reset = True
        try:
            yield self
        finally:
            self._scopes.pop()
            self._pending_reset = True

    @contextlib.contextmanager
    def branch_scope(self, name: str, step_index: Optional[int] = None) -> Iterator["Session"]:
        """Calls inside belong to the named branch (diffusers' ``cache_context`` name)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a branch name must be a non-empty str, got {name!r}")
        prior = self._context
        self._context = (name, None if step_index is None else int(step_index))
        try:
            yield self
        finally:
            self._context = prior

    @property
    def num_inference_steps(self) -> Optional[int]:
        """Steps of the current generation, when known (pipeline call, ``dcp.generation`` or config)."""
        scoped = next((n for n in reversed(self._scopes) if n is not None), None)
        return scoped if scoped is not None else self.config.num_inference_steps

    # -- one transformer call -----------------------------------------------------------
    def begin_call(self, timestep: Any = None, layout: Optional[tuple] = None, ident: Optional[tuple] = None) -> None:
        """Called once per transformer call, before any piece runs. Nested calls (a runner
        inside the forward wrapper, or a second graph of the same forward) join the call in
        progress. State is snapshotted first: ``abort_call`` restores it if the call raises, so
        a retried call is filed exactly like the first attempt. The call is placed (``place``)
        when a state is first needed: reading a timestep that lives on a GPU is a host sync,
        which there coincides with the decision's own sync after the Fn blocks instead of
        stalling the launch of the glue and Fn blocks."""
        me = threading.get_ident()
        with self._call_lock:
            self._check_thread(me)
            self._depth += 1
            if self._depth > 1:
                return
            self._owner = me
        self._snap = self._snapshot()
        self.unsure = None
        self._pending = (timestep, self._context)
        self._layout, self._ident, self._placed = layout, ident, None

    def place(self) -> None:
        """Sets ``branch``, ``step`` (the pipeline step, shared by the branches of one step) and
        ``unsure`` (a reason when the call must compute and leave every state untouched, else
        None) for the call in progress; once per call, on first need."""
        if self._pending is None:
            return
        timestep, ctx = self._pending
        self._pending = None
        value = _scalar(timestep)
        if self._pending_reset:  # refresh(), or a generation scope began or ended
            self._new_generation()
            self._run_restart(None)
        aborted, self._aborted = self._aborted, None
        if ctx is not None:
            branch, boundary = self._named_call(ctx, value)
        else:
            branch, boundary = self._heuristic_call(value)
            self._placed = (value, self._ident)
            self._after_error(aborted, value)
        if boundary:
            self._new_generation()
            self._run_restart(value)
            if ctx is not None:
                self._named_ts[ctx[0]] = value
        elif (ctx is None and not self._scopes and self._lead is not None and branch == self._lead
              and self._generation_done()):
            self._new_generation()  # num_inference_steps (config) steps have run
            self._run_restart(value)
        if ctx is not None and ctx[1] is not None:  # the pipeline's own step index
            if self._index_base is None:
                self._index_base = ctx[1]
            step = ctx[1] - self._index_base
            self.steps = max(self.steps, step + 1)
            self._named_steps[ctx[0]] = ctx[1]
        else:  # a step begins with each call of the generation's first branch
            if self._lead is None:
                self._lead = branch
            if branch == self._lead or self.steps == 0:
                self.steps += 1
            step = self.steps - 1
        self.branch, self.step = branch, step
        self.calls += 1
        self._check_layout(branch)
        if not self.enabled:
            self.unsure = "disabled"
        elif torch.is_grad_enabled():  # a cached step would have no gradient through the skipped blocks
            self.unsure = "grad"
            self.warn_once(key="grad", msg=(
                "a call with gradients enabled computes every block and leaves the cache untouched: a cached "
                "step has no gradient through the blocks it skips, and keeping its tensors would keep their "
                "autograd graphs alive. Run inference under torch.no_grad() or torch.inference_mode() (diffusers "
                "pipelines do) to cache"))

    def _after_error(self, aborted: Optional[tuple], value: Optional[float]) -> None:
        """After a bare call raised, the heuristic's count of calls at its timestep lost one: a
        retry (equal arguments) is filed as the first attempt; any other call at that timestep
        (the next CFG branch, if the failed call was not retried) cannot be placed, so every call
        at that timestep computes and leaves the states alone."""
        if (aborted is not None and value is not None and aborted[0] == value
                and self.config.enable_separate_cfg is None and not _same_inputs(aborted[1], self._ident)):
            self._suspect = value
            self.warn_once(key="after-error", msg=(
                "a call raised and the next call at its timestep passed other arguments (not a retry): the CFG "
                "branch of the calls at that timestep is unknown, so they compute. Name branches with "
                "`with dcp.branch(module, 'uncond'):` (pipelines do) to keep caching through errors"))
        if self._suspect is not None:
            if value == self._suspect:
                self.unsure = "after-error"
            else:
                self._suspect = None

    def _check_layout(self, branch: Branch) -> None:
        """An input of another shape or dtype than the branch's previous call, within one
        generation (a prompt of another length, a new resolution): what the branch stored was
        computed from other inputs, and a residual of the right shape can still be stale (the
        text tokens changed, the image tokens did not). Its states start afresh: the call computes."""
        layout = getattr(self, "_layout", None)
        if layout is None:
            return
        prev = self._layouts.get(branch)
        self._layouts[branch] = layout
        if prev is None or prev == layout:
            return
        for key, st in self.states.items():
            if key[1] == branch and (st.buffers or st.calibrator is not None):
                self._touch(key, st)
                st.restart()
        self.warn_once(key="layout", msg=(
            "an input changed shape or dtype within one generation (e.g. a prompt of another length): the "
            "cache of that branch was dropped and the call computes. Start a new generation for a new input "
            "(a pipeline call does; for bare calls use `with dcp.generation(module):` or dcp.refresh(module))"))

    def _check_thread(self, me: int) -> None:
        """A call or generation from a second thread while one of another thread is in progress
        would join it (nested calls and scopes do): refused before anything is touched."""
        in_call = bool(self._depth) and self._owner != me
        if in_call or (self._scopes and self._scope_owner != me):
            busy = "a call is" if in_call else "a generation (a pipeline call) is"
            raise ConcurrentCallError(
                f"dit_cachepass: this cached module was used from a second thread while {busy} in progress in "
                "another; its cache state follows one sequence of denoising calls, and two interleaved sequences "
                "would read each other's residuals. Give each thread its own module (copy.deepcopy(module), or "
                "its own pipeline with a copied transformer, caches on its own) or serialize the calls with a lock")

    def end_call(self) -> None:
        """The call returned: keep what it changed (a call that needed no state is placed now,
        so it counts as a step all the same)."""
        if self._depth:
            if self._depth == 1:
                self.place()
            self._depth -= 1
            if not self._depth:
                self._snap = None
                self._ident = self._placed = None  # keep no reference to the call's inputs

    def abort_call(self) -> None:
        """The call raised: put every counter, buffer and record back as before it."""
        if not self._depth:
            return
        self._depth -= 1
        if not self._depth:
            self._pending = None
        if not self._depth and self._snap is not None:
            self._restore(self._snap)
            self._snap = None
            self._aborted = self._placed  # (placed by the heuristic only)

    def _named_call(self, ctx: tuple[str, Optional[int]], value: Optional[float]) -> tuple[Branch, bool]:
        """A call inside ``cache_context(name)`` / ``dcp.branch``: the branch is the name.
        A new generation when the same branch comes back with the same or an earlier step
        index; without a step index and outside a generation scope, when the branch's own
        timestep repeats or jumps back."""
        name, index = ctx
        branch: Branch = 0 if name == "cond" else name
        if index is not None:
            last = self._named_steps.get(name)
            return branch, last is not None and index <= last
        if self._scopes or value is None:
            return branch, False
        last_t = self._named_ts.get(name)
        self._named_ts[name] = value
        if last_t is None:
            return branch, False
        if abs(value - last_t) <= 1e-6 * max(1.0, abs(value)):  # the branch's timestep did not move
            if not self.config.detect_new_generation:
                self.unsure = "ambiguous-generation"
                self._warn_heuristic(f"branch {name!r} was called twice at timestep {value:g}: these calls compute")
                return branch, False
            self._warn_heuristic(f"branch {name!r} was called twice at timestep {value:g}: a new generation "
                                 "starts (warmup again)")
            return branch, True
        direction = 1 if value > last_t else -1
        if self._direction is None:
            self._direction = direction
            return branch, False
        return branch, direction != self._direction and self.config.detect_new_generation

    def _heuristic_call(self, value: Optional[float]) -> tuple[Branch, bool]:
        """No named branch: branches and generations from the timestep. Returns (branch, new
        generation). A call the heuristic cannot place either starts a new generation or is
        computed (``unsure``), never guessed, and warns once."""
        mode = self.config.enable_separate_cfg
        scoped = bool(self._scopes)
        if value is None:  # no timestep: nothing to tell branches or generations apart by
            if mode is None:
                self.unsure = "no-timestep"
                self._warn_heuristic("this graph has no timestep input, so CFG branches cannot be told apart "
                                     "(set enable_separate_cfg, or use dcp.compile, which reads the timestep "
                                     "argument): every call computes")
            elif not scoped and self.config.num_inference_steps is None:
                self.unsure = "no-boundary"
                self._warn_heuristic("this graph has no timestep input and no generation boundary is known, so a "
                                     "new prompt cannot be told from the next step: every call computes")
            return self._parity_or_zero(mode), False
        last = self._last_timestep
        self._last_timestep = value
        if last is not None and abs(value - last) <= 1e-6 * max(1.0, abs(value)):
            r = self._run
            limit = self._branch_limit(mode)
            self._run += 1
            if r < limit:
                return (r if mode is None else self._parity_or_zero(mode)), False
            what = (f"the timestep {value:g} repeated {r + 1} times in a row, more than the {limit} "
                    "call(s) per step seen before")
            if scoped or not self.config.detect_new_generation:
                self.unsure = "ambiguous-branch"
                self._warn_heuristic(what + ": these calls compute")
                return 0, False
            # rounded timesteps that collide, or a new generation starting where the last one
            # ended: either way a new generation is safe (it recomputes, never reuses)
            self._warn_heuristic(what + ": a new generation starts (warmup again)")
            return 0, True
        if last is not None and last != self._suspect:  # past the limit: not branches; after an error: unknown
            self._prev_run = min(self._run, self._branch_limit(mode))
        self._run = 1
        if last is None or scoped or not self.config.detect_new_generation:
            return self._parity_or_zero(mode), False
        direction = 1 if value > last else -1
        if self._direction is None:
            self._direction = direction  # most schedulers count down; Lumina2 counts up
            return self._parity_or_zero(mode), False
        return self._parity_or_zero(mode), direction != self._direction  # jumped back: a new generation

    def _branch_limit(self, mode: Optional[bool]) -> int:
        """How many calls may share one timestep: the previous step's call count (auto; at
        most MAX_CFG_BRANCHES in a generation's first step), 2 (parity) or 1 (one branch)."""
        if mode is None:
            return self._prev_run if self._prev_run is not None else self.MAX_CFG_BRANCHES
        return 2 if mode else 1

    def _parity_or_zero(self, mode: Optional[bool]) -> int:
        if mode:  # cache-dit's parity rule, counted within the generation
            return (self.calls % 2) ^ int(self.config.cfg_compute_first)
        return 0

    def _run_restart(self, value: Optional[float]) -> None:
        self._last_timestep = value
        self._run = 1 if value is not None else 0
        self._prev_run = None
        self._direction = None

    def _warn_heuristic(self, what: str) -> None:
        self.warn_once(key="heuristic", msg=f"{what}. The timestep heuristic cannot decide this boundary; use "
                       "dcp.enable_cache(pipe), `with dcp.generation(module):` and `with dcp.branch(module, "
                       "'uncond'):`, or set enable_separate_cfg / num_inference_steps")

    def _generation_done(self) -> bool:
        """Have ``num_inference_steps`` (config) pipeline steps run?"""
        n = self.config.num_inference_steps
        if n is None:
            return False
        if self.config.enable_separate_cfg:  # parity mode: exactly two calls per step
            return self.calls >= 2 * n
        return self.steps >= n

    def _new_generation(self) -> None:
        self._pending_reset = False
        if self.calls:
            self.generation += 1
            for key, s in self.states.items():
                self._touch(key, s)
                s.new_generation()
        self.calls = self.steps = 0
        self._layouts = {}
        self._lead = None
        self._index_base = None
        self._named_steps = {}
        self._named_ts = {}

    # -- snapshot / restore ---------------------------------------------------------------
    _SCALARS = ("calls", "steps", "branch", "step", "generation", "_last_timestep", "_direction", "_run",
                "_prev_run", "_pending_reset", "_lead", "_index_base", "unsure", "_suspect")

    def _snapshot(self) -> tuple:
        """The session's own counters now; a loop state is snapshotted when the call first
        touches it (``state``, ``_new_generation``): most calls touch one state per loop."""
        return (_get_scalars(self), dict(self._named_steps), dict(self._named_ts), dict(self.states), {},
                dict(self._layouts))

    def _restore(self, snap: tuple) -> None:
        scalars, named, named_ts, states, loop_snaps, self._layouts = snap
        for k, v in zip(self._SCALARS, scalars):
            setattr(self, k, v)
        self._named_steps, self._named_ts = named, named_ts
        self.states = states
        for k, loop_snap in loop_snaps.items():
            if k in states:  # (a state made during the call is dropped with the new dict)
                states[k].restore(loop_snap)

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


_get_scalars = operator.attrgetter(*Session._SCALARS)  # one C call per snapshot


def _session_from_settings(settings: dict) -> Session:
    """Unpickling a ``Session``: a fresh one with the pickled settings."""
    return Session(**settings)
