"""Run: execute the pieces in order; before each middle, ask the loop's state whether to
compute it or to rebuild its outputs from the cached residuals."""

from __future__ import annotations

import operator
import re
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from ..errors import StageError
from ..compiler.flops import flop_counter
from ..compiler.lower import compile_piece, region_cache
from ..compiler.rewrite import Slot, SplitProgram
from .middle import MiddleCall

if TYPE_CHECKING:
    from ..compiler.plan import LoopPlan
    from .session import Session


# the model's own timestep argument (l_timestep_, l_kwargs_timestep_), never a parameter such
# as l_self_..._timestep_embedder_..._weight_
_TIMESTEP = re.compile(r"^l_(kwargs_)?timesteps?_$", re.IGNORECASE)


def _gatherer(slots: list[int]) -> Callable[[list], tuple]:
    if len(slots) == 1:
        j = slots[0]
        return lambda env: (env[j],)
    if not slots:
        return lambda env: ()
    return operator.itemgetter(*slots)


def _output_builder(output: Any) -> Callable[[list], Any]:
    """The graph's output structure from the environment (dynamo's graphs return a flat tuple
    of nodes: one precomputed gather; anything else is rebuilt generically)."""
    if isinstance(output, tuple) and output and all(isinstance(s, Slot) for s in output):
        get = _gatherer([s.index for s in output])
        return lambda env: tuple(get(env))
    return lambda env: fx.node.map_aggregate(output, lambda s: env[s.index] if isinstance(s, Slot) else s)


def _spec(v: Any) -> Any:
    """What is needed to rebuild a fake twin of an argument (tensors are not kept alive)."""
    if isinstance(v, torch.Tensor):
        return (tuple(v.shape), tuple(v.stride()), dict(dtype=v.dtype, device=v.device))
    return v


class Runner:
    """The callable the dynamo backend returns for one captured graph. Loop state lives in
    the session (per loop and CFG branch), so graphs recompiled for new shapes share it."""

    def weaken(self) -> None:
        """Hold the session weakly: dynamo keeps the runner in its cache on the forward's code
        object, which the garbage collector cannot see through, so a strong reference would keep
        a ``dcp.compile``d module (which owns the session) alive forever."""
        self._strong = None

    @property
    def session(self) -> "Session":
        s = self._session()
        if s is None:
            raise RuntimeError("dit_cachepass: the compiled module of this graph was garbage-collected")
        return s

    def __init__(self, prog: SplitProgram, session: "Session", loops: list["LoopPlan"], backend: str,
                 symbolic: bool = False, guarded: frozenset[int] = frozenset()):
        self.prog = prog
        self._session = weakref.ref(session)
        self._strong: Optional["Session"] = session  # dropped by ``weaken``
        # lowering="regional": the compiled block graphs every piece of this runner shares
        self.regions = region_cache(backend, session.compile_options, self._lower_failed)
        # per piece, the input positions whose layout can change between calls: activations made
        # by other pieces (a cached step's rebuilt streams), never the ``guarded`` graph arguments
        self.fns = [compile_piece(p.gm, backend, symbolic, self._lower_failed,
                                  [k for k, j in enumerate(p.inputs) if j not in guarded], session.compile_options,
                                  self.regions)
                    for p in prog.pieces]
        # precomputed argument gathering: one C call per piece instead of a list over ~1000 parameters
        self.gather = [_gatherer(p.inputs) for p in prog.pieces]
        self.loops = loops
        self.loop_names = loop_names = [lp.name for lp in loops]
        self.arg_specs: list[Any] = [None] * len(prog.pieces)  # shapes of each piece's first call
        self._flops: Optional[list[int]] = None
        session.runners.append(self)
        self.never_cache: dict[int, str] = {}
        for piece in prog.pieces:
            if piece.spec is not None and piece.spec.unpaired:
                self.never_cache[piece.loop] = (
                    f"middle output(s) {', '.join(piece.spec.unpaired)} are not block-to-block streams, so no "
                    "residual can rebuild them; reusing them would apply a stale tensor")
                session.warn(f"loop {loop_names[piece.loop]} always computes: {self.never_cache[piece.loop]}")
        # Fn pieces that take the reference their loop's state is expected to hold (``fold``):
        # per piece, None or (input slot, loop name, the reference's layout: a slot or a layout)
        mids = {pc.loop: pc.spec for pc in prog.pieces
                if pc.kind == "middle" and pc.spec is not None and pc.spec.ref_input is not None}
        self.feeds = [(mids[pc.loop].ref_input, loop_names[pc.loop], mids[pc.loop].ref_like)
                      if pc.kind == "Fn" and pc.loop in mids else None for pc in prog.pieces]
        self.timestep_slot = next((i for i, n in enumerate(prog.arg_names) if _TIMESTEP.match(n)), None)
        self._output = _output_builder(prog.output)
        # torch.compile(backend="dit_cache"): maps the call's arguments to the module's session
        self.resolve: Optional[Callable[[tuple], "Session"]] = None

    def _lower_failed(self, err: Exception) -> None:

        self.session.stage_failed(StageError("lower", err), "that piece runs uncompiled (eager)")

    def __call__(self, *args: Any) -> Any:
        prog = self.prog
        env: list[Any] = [None] * prog.n_slots
        env[: prog.n_args] = args
        # the session of the module being called (torch.compile's backend shares one runner
        # between every instance of a class: the parameters passed in tell them apart)
        session = self.session if self.resolve is None else self.resolve(args)
        session.begin_call(args[self.timestep_slot] if self.timestep_slot is not None else None,
                           tuple((a.shape, a.dtype) for a in args if isinstance(a, torch.Tensor)))
        try:
            for piece, fn, gather, feed in zip(prog.pieces, self.fns, self.gather, self.feeds):
                if feed is not None:
                    like = feed[2]
                    env[feed[0]] = session.expected_reference(feed[1], env[like] if isinstance(like, int) else like)
                if piece.kind == "middle":
                    session.place()  # the call's branch and step, first needed here (after Fn)
                    if session.unsure is None:
                        self._middle(piece, fn, gather, env, session)
                        continue
                # glue, Fn, Bn; or a call no state may see: compute the middle too
                self._run(piece, fn, gather, env)
        except BaseException:
            session.abort_call()  # counters, buffers and records as before this call
            raise
        session.end_call()
        if self.arg_specs[0] is None:  # the first call: each piece's argument shapes, for piece_flops
            self.arg_specs = [[_spec(env[j]) for j in p.inputs] for p in prog.pieces]
        return self._output(env)

    def piece_flops(self) -> Optional[list[int]]:
        """FLOPs of one run of each piece, counted once under FakeTensorMode (no memory, no
        compute; fake rather than meta because pieces may create tensors on a fixed device).
        None when a piece cannot run on fake tensors (data-dependent scalars)."""
        if self._flops is None:
            flops = []
            try:
                for piece, specs in zip(self.prog.pieces, self.arg_specs):
                    if specs is None:
                        flops.append(0)
                        continue
                    with FakeTensorMode(allow_non_fake_inputs=True):
                        args = [torch.empty_strided(s[0], s[1], **s[2]) if isinstance(s, tuple) else s
                                for s in specs]
                        with flop_counter() as counter:
                            piece.gm(*args)
                    flops.append(counter.get_total_flops())
            except Exception:  # accounting must never break a run or a summary
                return None
            self._flops = flops
        return self._flops

    @staticmethod
    def _run(piece, fn, gather, env: list[Any]) -> None:
        for s, v in zip(piece.outputs, fn(*gather(env))):
            env[s] = v

    def _middle(self, piece, fn, gather, env: list[Any], session: Optional["Session"] = None) -> None:
        """DBCache: the whole middle, decided on the Fn residual. DBPrune: one block, decided
        on that block's input (``piece.block``)."""
        spec, key = piece.spec, piece.block
        lp = self.loops[piece.loop]
        if key is not None and key in lp.config.non_prune_block_ids:
            return self._run(piece, fn, gather, env)
        outs = [o for _, o in spec.residual_pairs]
        folded = spec.measured is not None  # the Fn residual, its sum and the residuals come from the pieces
        call = MiddleCall(session or self.session, lp.name, lp.config, lp.calibrator_config, key,
                          self.never_cache.get(piece.loop), spec.hidden_pair, env[spec.hidden_inF],
                          env[spec.hidden_in0], [env[i] for i, _ in spec.residual_pairs],
                          (env[spec.measured], env[spec.measured_sum],
                           *((env[spec.ref_input], env[spec.measured_num]) if spec.ref_input is not None
                             else (None, None))) if folded else None)
        if not call.cache:
            self._run(piece, fn, gather, env)
            return call.computed([env[o] for o in outs], [env[o] for o in spec.value_outputs],
                                 ([env[r] for r in spec.residuals], env[spec.residual_poison]) if folded else None)
        new, values = call.cached()
        for o, v in zip(outs + spec.value_outputs, new + values):
            env[o] = v
