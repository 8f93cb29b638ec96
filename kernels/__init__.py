"""Fused kernels for the cache runtime, with torch references (``dit_cachepass.kernels``).

Each public function dispatches on its first tensor argument (see :func:`backend_for`):
the Triton kernel for CUDA/ROCm tensors when Triton is installed, the torch reference
otherwise. ``DIT_CACHEPASS_KERNELS=reference|triton`` forces one backend
(``auto``/unset = the rule above); forcing ``triton`` for CPU tensors needs
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for tests: slow).

Both backends share argument checks and the NaN/inf/zero policies, so a caller's
decision (compute vs. reuse) does not depend on which one ran.
"""

import os

import torch

from ._utils import HAS_TRITON, interpret_enabled
from .residual_apply import apply_residuals_reference, apply_residuals_triton
from .residual_diff import (
    fused_residual_diff_reference,
    fused_residual_diff_triton,
    rel_l1_diff_reference,
    rel_l1_diff_triton,
)
from .taylorseer import (
    MAX_ORDER,
    taylor_predict_apply_reference,
    taylor_predict_apply_triton,
    taylor_update_reference,
    taylor_update_triton,
)

ENV_VAR = "DIT_CACHEPASS_KERNELS"
BACKENDS = ("reference", "triton")

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "HAS_TRITON",
    "MAX_ORDER",
    "apply_residuals",
    "backend_for",
    "fused_residual_diff",
    "rel_l1_diff",
    "taylor_predict_apply",
    "taylor_update",
]


def backend_for(tensor: torch.Tensor) -> str:
    """``"triton"`` or ``"reference"``: which implementation runs for ``tensor``.

    Read on every call (not cached) so tests and users can flip the env var at runtime.
    Raises ``RuntimeError`` when ``triton`` is forced but cannot run, rather than
    silently measuring or testing the other backend.
    """
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("", "auto"):
        return "triton" if HAS_TRITON and tensor.is_cuda else "reference"
    if forced == "reference":
        return "reference"
    if forced == "triton":
        if not HAS_TRITON:
            raise RuntimeError(f"{ENV_VAR}=triton but triton is not installed")
        if tensor.is_cuda or interpret_enabled():
            return "triton"
        raise RuntimeError(
            f"{ENV_VAR}=triton but the tensor is on {tensor.device}; "
            "set TRITON_INTERPRET=1 to run the Triton kernels on CPU (slow, for tests)"
        )
    raise ValueError(f"{ENV_VAR}={forced!r}: expected one of auto, reference, triton")


def fused_residual_diff(
    fn_out: torch.Tensor, fn_in: torch.Tensor, prev_residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn_out - fn_in, sum|residual - prev| / sum|prev|)`` in one pass; the ratio is a
    0-d fp32 device tensor (+inf without ``prev_residual`` or when ``sum|prev| == 0``,
    NaN on NaN/inf inputs)."""
    if backend_for(fn_out) == "triton":
        return fused_residual_diff_triton(fn_out, fn_in, prev_residual)
    return fused_residual_diff_reference(fn_out, fn_in, prev_residual)


def rel_l1_diff(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """0-d fp32 ``sum|cur - prev| / sum|prev|`` (same +inf/NaN policy)."""
    if backend_for(cur) == "triton":
        return rel_l1_diff_triton(cur, prev)
    return rel_l1_diff_reference(cur, prev)


def apply_residuals(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: torch.Tensor | None = None,
    encoder_residual: torch.Tensor | None = None,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(hidden + hidden_residual, encoder + encoder_residual)``, both streams in one
    launch; ``encoder_out`` is None when no encoder stream is given."""
    if backend_for(hidden) == "triton":
        return apply_residuals_triton(hidden, hidden_residual, encoder, encoder_residual, inplace=inplace)
    return apply_residuals_reference(hidden, hidden_residual, encoder, encoder_residual, inplace=inplace)


def taylor_update(
    new_value: torch.Tensor,
    prev_derivs: list[torch.Tensor | None],
    window: float,
    order: int,
    allow_derivs: bool,
) -> list[torch.Tensor | None]:
    """TaylorSeer ladder update (cache-dit 1.5.3 semantics), all orders in one pass.
    Orders above ``MAX_ORDER`` use the reference even on CUDA."""
    if backend_for(new_value) == "triton" and order <= MAX_ORDER:
        return taylor_update_triton(new_value, prev_derivs, window, order, allow_derivs)
    return taylor_update_reference(new_value, prev_derivs, window, order, allow_derivs)


def taylor_predict_apply(
    derivs: list[torch.Tensor | None], distance: float, base: torch.Tensor | None = None
) -> torch.Tensor:
    """``base + sum_i D[i] * distance**i / i!`` (terms stop at the first None)."""
    n_terms = next((i for i, d in enumerate(derivs) if d is None), len(derivs))
    if n_terms and backend_for(derivs[0]) == "triton" and n_terms <= MAX_ORDER + 1:
        return taylor_predict_apply_triton(derivs, distance, base)
    return taylor_predict_apply_reference(derivs, distance, base)
