"""Observe one uncached generation: every step's Fn residual (the tensor DBCache compares) and
the pairwise diffs between them; compare outputs; change the decision fields of compiled
modules between runs without recompiling."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from ..config import DBCacheConfig


OBSERVE_THRESHOLD = 1e-12  # > 0, so the diff is measured; no real diff is below it
_DECISION_FIELDS = ("residual_diff_threshold", "max_warmup_steps", "max_continuous_cached_steps",
                    "max_cached_steps", "max_accumulated_residual_diff_threshold", "steps_computation_mask")


def _to_tensor(out: Any) -> Optional[torch.Tensor]:
    """The output of ``call`` as a float tensor: a tensor, ``.images`` of a pipeline output,
    the first item of a tuple/list, PIL images or numpy arrays (uint8 scaled to [0, 1])."""
    if hasattr(out, "images"):
        out = out.images
    elif hasattr(out, "frames"):
        out = out.frames
    if isinstance(out, (tuple, list)) and out and not isinstance(out[0], (int, float)):
        items = [_to_tensor(o) for o in out]
        if all(isinstance(i, torch.Tensor) for i in items) and len({tuple(i.shape) for i in items}) == 1:
            return torch.stack(items)  # type: ignore[arg-type]
        return items[0]
    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu()
    try:
        arr = np.asarray(out)
    except Exception:
        return None
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float32) / 255.0)
    if np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(arr.astype(np.float32))
    return None


def output_error(out: Any, ref: Any) -> tuple[Optional[float], Optional[float]]:
    """(relative L1 = mean|out - ref| / mean|ref|, PSNR in dB) of two outputs of ``call``. PSNR
    only for image-like tensors (3+ dims); data range 1 when ``ref`` lies in [0, 1], else its
    max - min."""
    a, b = _to_tensor(out), _to_tensor(ref)
    if a is None or b is None or a.shape != b.shape or b.numel() == 0:
        return None, None
    den = b.abs().mean()
    rel = float((a - b).abs().mean() / den) if den > 0 else None
    psnr = None
    if b.dim() >= 3:
        rng = 1.0 if float(b.min()) >= 0 and float(b.max()) <= 1 else float(b.max() - b.min())
        mse = float(((a - b) ** 2).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(rng * rng / mse) if rng > 0 else None
    return rel, psnr


def _targets(pipe_or_module: Any) -> list[torch.nn.Module]:
    if isinstance(pipe_or_module, torch.nn.Module):
        return [pipe_or_module]
    comps = getattr(pipe_or_module, "components", None)
    if not isinstance(comps, dict):
        raise TypeError(f"dcp.tune expects a diffusers pipeline or an nn.Module, got {type(pipe_or_module).__name__}")
    return [c for n, c in comps.items() if n.startswith("transformer") and isinstance(c, torch.nn.Module)]


def _reconfigure(sessions: list, decision: DBCacheConfig) -> None:
    """Give the compiled modules new decision fields without recompiling: the loop plans and
    the sessions share one (private) config object, so its fields are set in place; the loop
    states (whose policy reads the warmup at creation) are dropped and a new generation begins.
    Fn/Bn never change here (they shape the graphs)."""
    cfg = sessions[0].config
    for f in _DECISION_FIELDS:
        setattr(cfg, f, getattr(decision, f))
    cfg.validate()
    for s in sessions:
        assert s.config is cfg and s.params_modifiers is None
        s.states.clear()
        s.refresh()


class _Recorder:
    """After every call of a compiled module: keep each loop/branch's Fn residual of the step
    just computed (the reference DBCache stores), up to ``budget`` bytes."""

    def __init__(self, sessions: list, budget: int):
        self.sessions, self.budget, self.bytes = sessions, budget, 0
        self.residuals: dict[tuple, dict[int, torch.Tensor]] = {}
        self.overflow = False

    def __call__(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        for s in self.sessions:
            for key, st in s.states.items():
                rec = st.records[-1] if st.records else None
                buf = st.buffers.get(None)
                if rec is None or rec.step != st.step or rec.cached or buf is None or self.overflow:
                    continue
                per = self.residuals.setdefault((id(s), key), {})
                if st.step in per:
                    continue
                ref = buf.reference
                self.bytes += ref.numel() * ref.element_size()
                if self.bytes > self.budget:
                    self.overflow, self.residuals = True, {}
                    return
                per[st.step] = ref


def _pairwise(res: dict[int, torch.Tensor], n: int) -> np.ndarray:
    from ..kernels import rel_l1_diff

    out = np.full((n, n), np.nan)
    steps = sorted(res)
    for a, j in enumerate(steps):
        for k in steps[a + 1:]:
            if j < n and k < n:
                out[j, k] = float(rel_l1_diff(res[k], res[j]))
    return out
