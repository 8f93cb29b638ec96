"""Where each transformer call belongs: which generation, which pipeline step, which CFG
branch. Explicit boundaries (generation scopes, named branches) win; bare calls are placed by
the timestep heuristic. A call's counters are snapshotted when it begins and restored if it
raises. ``Session`` inherits this tracker; it owns the loop states the tracker resets."""

from __future__ import annotations

import contextlib
import operator
import threading
from typing import Any, Iterator, Optional, Union

import torch

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


class ConcurrentCallError(RuntimeError):
    """A cached module called from two threads at once (its state follows one call sequence)."""


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


class CallTracker:
    """Generation, step and branch of the call in progress (``place``). Needs from its subclass:
    ``config``, ``states`` (loop states reset at a new generation), ``enabled``, ``_touch`` and
    ``warn_once``."""
    MAX_CFG_BRANCHES = 4  # more calls than this with one timestep: not CFG

    def _init_tracking(self) -> None:
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
        self._layout: Optional[tuple] = None  # the input layout of the call in progress
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

    # -- explicit boundaries ------------------------------------------------------------
    @contextlib.contextmanager
    def generation_scope(self, num_inference_steps: Optional[int] = None) -> Iterator["CallTracker"]:
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
    def branch_scope(self, name: str, step_index: Optional[int] = None) -> Iterator["CallTracker"]:
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
        layout = self._layout
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


_get_scalars = operator.attrgetter(*CallTracker._SCALARS)  # one C call per snapshot
