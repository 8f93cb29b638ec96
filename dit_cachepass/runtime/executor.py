"""Run: execute the pieces in order; before each middle, ask the loop's state whether to
compute it or to rebuild its outputs from the cached residuals."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from ..flops import flop_counter
from ..kernels import apply_residuals, fused_residual_diff, rel_l1_diff
from ..lower import compile_piece
from ..rewrite import Slot, SplitProgram

if TYPE_CHECKING:
    from ..plan import LoopPlan
    from ..session import Session


# the model's own timestep argument (l_timestep_, l_kwargs_timestep_), never a parameter such
# as l_self_..._timestep_embedder_..._weight_
_TIMESTEP = re.compile(r"^l_(kwargs_)?timesteps?_$", re.IGNORECASE)


def _spec(v: Any) -> Any:
    """What is needed to rebuild a fake twin of an argument (tensors are not kept alive)."""
    if isinstance(v, torch.Tensor):
        return (tuple(v.shape), tuple(v.stride()), dict(dtype=v.dtype, device=v.device))
    return v


def _global_ratio(cur: torch.Tensor, ref: Optional[torch.Tensor], group: Any
                  ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """sum|cur - ref| / sum|ref| over all ranks' shards, and whether every rank has a usable
    reference. One all-reduce per decision, made by every rank on every call, so the ranks
    always take the same branch (a local decision would diverge and hang the next collective)."""
    import torch.distributed as dist

    stats = torch.zeros(3, dtype=torch.float64, device=cur.device)
    if ref is None:
        stats[2] = 1.0
    else:
        stats[0] = (cur.double() - ref.double()).abs().sum()
        stats[1] = ref.double().abs().sum()
    dist.all_reduce(stats, group=group)
    if stats[2] > 0:
        return None, torch.tensor(float("inf"))
    ratio = stats[0] / stats[1] if stats[1] > 0 else torch.tensor(float("inf"))
    return ref, ratio.float()


class Runner:
    """The callable the dynamo backend returns for one captured graph. Loop state lives in
    the session (per loop and CFG branch), so graphs recompiled for new shapes share it."""

    def __init__(self, prog: SplitProgram, session: "Session", loops: list["LoopPlan"], backend: str,
                 symbolic: bool = False):
        self.prog, self.session = prog, session
        self.fns = [compile_piece(p.gm, backend, symbolic, self._lower_failed) for p in prog.pieces]
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
        self.timestep_slot = next((i for i, n in enumerate(prog.arg_names) if _TIMESTEP.match(n)), None)

    def _lower_failed(self, err: Exception) -> None:
        from ..backend import StageError

        self.session.stage_failed(StageError("lower", err), "that piece runs uncompiled (eager)")

    def __call__(self, *args: Any) -> Any:
        prog = self.prog
        env: list[Any] = [None] * prog.n_slots
        env[: prog.n_args] = args
        if self.timestep_slot is not None:
            self.session.observe_timestep(args[self.timestep_slot])
        self.session.begin_call()
        for i, (piece, fn) in enumerate(zip(prog.pieces, self.fns)):
            if self.arg_specs[i] is None:
                self.arg_specs[i] = [_spec(env[j]) for j in piece.inputs]
            if piece.kind == "middle":
                self._middle(piece, fn, env)
            else:
                self._run(piece, fn, env)
        return fx.node.map_aggregate(prog.output, lambda s: env[s.index] if isinstance(s, Slot) else s)

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

    def _run(self, piece, fn, env: list[Any]) -> None:
        for s, v in zip(piece.outputs, fn(*[env[i] for i in piece.inputs])):
            env[s] = v

    def _middle(self, piece, fn, env: list[Any]) -> None:
        """DBCache: the whole middle, decided on the Fn residual. DBPrune: one block, decided
        on that block's input (``piece.block``)."""
        spec, key = piece.spec, piece.block
        lp = self.loops[piece.loop]
        if key is not None and key in lp.config.non_prune_block_ids:
            return self._run(piece, fn, env)
        state = self.session.state(lp.name, self.session.branch, lp.config, lp.calibrator_config)
        state.step = self.session.step
        state.never_cache = self.never_cache.get(piece.loop)
        ins = [env[i] for i, _ in spec.residual_pairs]
        outs = [o for _, o in spec.residual_pairs]
        x = env[spec.hidden_inF]
        reference = state.reference_for(key, x, ins)
        group = self.session.process_group
        if group is not None:  # sharded activations: every rank must take the same decision
            measured = x - env[spec.hidden_in0] if key is None else x
            reference, ratio = _global_ratio(measured, reference, group)
        elif key is None:  # one pass: Fn residual (x - loop input) and its diff vs the reference
            measured, ratio = fused_residual_diff(x, env[spec.hidden_in0], reference)
        else:
            measured, ratio = x, rel_l1_diff(x, reference) if reference is not None else None
        d = state.decide(key, reference, ratio)
        cal = state.calibrator
        calibrated = [cal is not None and cal.calibrates(k, spec.hidden_pair) for k in range(len(ins))]
        if d.cache:
            buf = state.buffers[key]
            plain = [k for k in range(len(ins)) if not calibrated[k]]
            for j in range(0, len(plain), 2):  # two streams per fused launch
                ks = plain[j:j + 2]
                res = apply_residuals(*[t for k in ks for t in (ins[k], buf.residuals[k])])
                for k, v in zip(ks, res):
                    env[outs[k]] = v
            for k in range(len(ins)):
                if calibrated[k]:
                    base = ins[k] if cal.cache_type == "residual" else None
                    env[outs[k]] = cal.forecast(k, state.step, base)
            for o, v in zip(spec.value_outputs, buf.values):
                env[o] = v
        else:
            self._run(piece, fn, env)
            residuals = [env[o] - t for o, t in zip(outs, ins)]
            state.store(key, measured, residuals, [env[o] for o in spec.value_outputs])
            for k in range(len(ins)):
                if calibrated[k]:
                    cal.update(k, residuals[k] if cal.cache_type == "residual" else env[outs[k]], state.step)
        state.record(d, key)
