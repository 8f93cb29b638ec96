"""Skipping a whole transformer call on planned steps (``DBCacheConfig.skip_whole_call``).

A DBCache step skips the middle blocks but still runs the Fn blocks (its probe), the Bn blocks
and the glue (embeddings, final norm and projection): on a small or shallow model that is a
large share of a call. A planned schedule needs no probe, so on the steps its mask marks 0 the
call can be skipped outright and its output forecast from the outputs of computed steps (or
reused). A skipped step then costs nothing and the same FLOPs buy more computed steps.

One ``LoopState`` per CFG branch under the name ``WHOLE_CALL`` keeps the last output (its
``Buffer``: the first output tensor as reference, every output tensor as a residual, the
output's pytree structure and non-tensor leaves as values) and the calibrator that follows each
output tensor. ``correct_skipped`` also keeps what each skipped step returned, until the next
computed step adds their estimated error to its output (``_corrected``). Anything that makes the
forecast doubtful computes: no stored output for this
branch in this generation, an input of another layout (the call tracker restarts the branch's
states), an unplaced call (``unsure``), a non-finite output (never stored).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.utils._pytree as pytree

from .calibrator_base import same_layout
from .policy import Decision

if TYPE_CHECKING:
    from .session import Session
    from .state import LoopState

#: the state name of the whole call (shown by ``dcp.summary``; never a block list's name)
WHOLE_CALL = "(whole call)"


def decide(state: "LoopState") -> Decision:
    """Compute on warmup steps, on steps the mask marks 1 or does not cover, and whenever no
    output of this branch is stored; skip otherwise."""
    config, step = state.config, state.step
    mask = config.steps_computation_mask
    if state.never_cache is not None:
        return Decision(False, "unsafe-middle")
    if step in state.policy.warmup_steps:
        return Decision(False, "warmup")
    if mask is None or step >= len(mask) or mask[step] == 1:
        return Decision(False, "mask")
    if None not in state.buffers:
        return Decision(False, "shape-change" if state.restarted else "no-reference")
    return Decision(True, "mask-static")


def serve(session: "Session", run: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """One call: ``run(*args, **kwargs)`` on a computed step (its output then stored), the
    forecast output on a skipped one."""
    session.place()
    # the whole call is not a loop: the session's own config (the one that asked for it), never a
    # loop's ParamsModifier
    state = session.state(WHOLE_CALL, session.branch, session.config, session.calibrator_config)
    state.step = session.step
    d = decide(state)
    cal = state.calibrator
    if d.cache:  # the stored output and the calibrator were updated together at each computed step
        buf = state.buffers[None]
        spec, values = buf.values
        tensors = [cal.forecast(k, state.step, None) if cal is not None else t.clone()
                   for k, t in enumerate(buf.residuals)]
        if state.config.correct_skipped:  # the stored output is the last computed step's
            anchor = next((r.step for r in reversed(state.records) if not r.cached), None)
            if anchor is not None:
                state.pending.append((state.step, [t.clone() for t in tensors], anchor, buf.residuals))
        state.record(d)
        return pytree.tree_unflatten(_merge(values, tensors), spec)
    out = run(*args, **kwargs)
    leaves, spec = pytree.tree_flatten(out)
    tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
    pending, state.pending = state.pending, []
    if tensors and session.unsure is None:
        kept = [t.detach().clone() for t in tensors]  # the caller may change its output in place
        values = [None if isinstance(v, torch.Tensor) else v for v in leaves]
        state.store(None, kept[0], kept, [spec, values])
        if cal is not None and None in state.buffers:  # finite: the calibrator follows it too
            for k, t in enumerate(kept):
                cal.update(k, t, state.step)
        if pending and None in state.buffers:
            fixed = _corrected(pending, kept, state.step, state.config.correct_skipped_power)
            if fixed is not None:
                out = pytree.tree_unflatten(_merge(values, fixed), spec)
    state.record(d)
    return out


def _corrected(pending: list, outputs: list[torch.Tensor], step: int,
               power: float = 0.0) -> Optional[list[torch.Tensor]]:
    """``correct_skipped``: ``outputs`` plus, for each skipped step s since the anchor step a,
    ``w ** power`` times the interpolation between the outputs at a and at ``step`` minus what s
    returned, ``w = (s - a) / (step - a)``. The sampler moved by the forecasts; adding their
    estimated error here moves it back on its next update.
    None (no correction) when any tensor changed layout since: when in doubt, the plain output."""
    fixed = [t.clone() for t in outputs]
    for s, forecast, a, anchor in pending:
        if len(forecast) != len(outputs) or len(anchor) != len(outputs) or not all(
                same_layout(f, t) and same_layout(v, t) for f, v, t in zip(forecast, anchor, outputs)):
            return None
        w = (s - a) / (step - a)
        for acc, f, v, t in zip(fixed, forecast, anchor, outputs):
            acc.add_(torch.lerp(v, t, w) - f, alpha=w ** power)
    return fixed


def _merge(values: list, tensors: list[torch.Tensor]) -> list:
    """The output's leaves: its non-tensor values with the tensors put back in order."""
    it = iter(tensors)
    return [next(it) if v is None else v for v in values]
