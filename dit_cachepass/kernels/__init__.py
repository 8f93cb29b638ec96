"""Fused kernels for the cache runtime, with torch references (``dit_cachepass.kernels``).

Each public function dispatches on its first tensor argument (see :func:`backend_for`):
the Triton kernel for CUDA/ROCm tensors when Triton is installed, the torch reference
otherwise. ``DIT_CACHEPASS_KERNELS=reference|triton`` forces one backend
(``auto``/unset = the rule above); forcing ``triton`` for CPU tensors needs
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for tests: slow).

Both backends share argument checks and the NaN/inf/zero policies, so a caller's
decision (compute vs. reuse) does not depend on which one ran.

Each public function is a thin wrapper around a ``torch.library.custom_op`` in the
``dit_cachepass`` namespace (``torch.ops.dit_cachepass.*``, see :data:`OPS`). The op is
opaque to torch.compile / torch.export (its fake implementation gives the output
shapes, dtypes and checks), so the kernels run inside compiled regions without a graph
break, are kept as single nodes by ``torch.export`` and are capturable in CUDA graphs
(no host syncs). The backend choice above happens inside the op, at run time, so the
env var still applies to compiled and exported code. Ops return fresh tensors only
(custom ops must not alias their inputs); the wrappers re-add the aliasing parts of
the public contract (``taylor_update``'s ``D[0]`` is ``new_value``; ``apply_residuals(...,
inplace=True)`` calls the mutating op ``apply_residuals_`` and returns the bases).
"""

import os
from typing import List, Optional

import torch

from ._utils import HAS_TRITON, interpret_enabled
from . import residual_apply as _ra
from . import residual_diff as _rd
from . import taylorseer as _ts
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
    "OPS",
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



# ------------------------------------------------------------------- custom ops
def _unaliased(out: torch.Tensor, inputs: list) -> torch.Tensor:
    """``out``, cloned if it shares memory with an input (a custom op's outputs must be
    fresh; e.g. the fp32 reference forecast of a single term is ``D[0]`` itself)."""
    ptr = out.untyped_storage().data_ptr()
    if any(t is not None and t.untyped_storage().data_ptr() == ptr for t in inputs):
        return out.clone(memory_format=torch.contiguous_format)
    return out


@torch.library.custom_op("dit_cachepass::fused_residual_diff", mutates_args=())
def _fused_residual_diff_op(
    fn_out: torch.Tensor, fn_in: torch.Tensor, prev_residual: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    # Module-global lookups at call time, so tests can spy on the implementations.
    if backend_for(fn_out) == "triton":
        res, ratio = fused_residual_diff_triton(fn_out, fn_in, prev_residual)
    else:
        res, ratio = fused_residual_diff_reference(fn_out, fn_in, prev_residual)
    inputs = [fn_out, fn_in, prev_residual]
    return _unaliased(res, inputs), _unaliased(ratio, inputs)


@_fused_residual_diff_op.register_fake
def _(fn_out, fn_in, prev_residual):
    _rd._check_residual_args(fn_out, fn_in, prev_residual)
    return fn_out.new_empty(fn_out.shape), fn_out.new_empty((), dtype=torch.float32)


@torch.library.custom_op("dit_cachepass::rel_l1_diff", mutates_args=())
def _rel_l1_diff_op(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    if backend_for(cur) == "triton":
        ratio = rel_l1_diff_triton(cur, prev)
    else:
        ratio = rel_l1_diff_reference(cur, prev)
    return _unaliased(ratio, [cur, prev])


@_rel_l1_diff_op.register_fake
def _(cur, prev):
    _rd.check_float("cur", cur)
    _rd.check_nonempty("cur", cur)
    _rd._check_pair("cur", cur, "prev", prev)
    return cur.new_empty((), dtype=torch.float32)


def _apply_impl(hidden, hidden_residual, encoder, encoder_residual, inplace):
    if backend_for(hidden) == "triton":
        return apply_residuals_triton(hidden, hidden_residual, encoder, encoder_residual, inplace=inplace)
    return apply_residuals_reference(hidden, hidden_residual, encoder, encoder_residual, inplace=inplace)


@torch.library.custom_op("dit_cachepass::apply_residuals", mutates_args=())
def _apply_residuals_op(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: Optional[torch.Tensor],
    encoder_residual: Optional[torch.Tensor],
) -> List[torch.Tensor]:
    """``[hidden_out]`` or ``[hidden_out, encoder_out]``."""
    h, e = _apply_impl(hidden, hidden_residual, encoder, encoder_residual, False)
    inputs = [hidden, hidden_residual, encoder, encoder_residual]
    return [_unaliased(h, inputs)] + ([] if e is None else [_unaliased(e, inputs)])


@_apply_residuals_op.register_fake
def _(hidden, hidden_residual, encoder, encoder_residual):
    _ra._check_args(hidden, hidden_residual, encoder, encoder_residual)
    return [hidden.new_empty(hidden.shape)] + ([] if encoder is None else [encoder.new_empty(encoder.shape)])


@torch.library.custom_op("dit_cachepass::apply_residuals_", mutates_args=("hidden", "encoder"))
def _apply_residuals_inplace_op(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: Optional[torch.Tensor],
    encoder_residual: Optional[torch.Tensor],
) -> None:
    """In place: ``hidden += hidden_residual`` (and ``encoder += encoder_residual``)."""
    _apply_impl(hidden, hidden_residual, encoder, encoder_residual, True)


@_apply_residuals_inplace_op.register_fake
def _(hidden, hidden_residual, encoder, encoder_residual):
    _ra._check_args(hidden, hidden_residual, encoder, encoder_residual)


@torch.library.custom_op("dit_cachepass::taylor_update", mutates_args=())
def _taylor_update_op(
    new_value: torch.Tensor,
    prev_derivs: List[Optional[torch.Tensor]],
    window: float,
    order: int,
    allow_derivs: bool,
) -> List[torch.Tensor]:
    """The *new* derivatives ``[D1, ..., Dk]`` only (``D0`` would alias ``new_value``)."""
    if backend_for(new_value) == "triton" and order <= MAX_ORDER:
        out = taylor_update_triton(new_value, prev_derivs, window, order, allow_derivs)
    else:
        out = taylor_update_reference(new_value, prev_derivs, window, order, allow_derivs)
    news = [d for d in out[1:] if d is not None]
    inputs = [new_value, *prev_derivs]
    return [_unaliased(d, inputs) for d in news]


@_taylor_update_op.register_fake
def _(new_value, prev_derivs, window, order, allow_derivs):
    k = _ts._num_new_derivs(new_value, prev_derivs, order, allow_derivs)
    _ts._check_update_args(new_value, prev_derivs, k, window)
    return [new_value.new_empty(new_value.shape) for _ in range(k)]


@torch.library.custom_op("dit_cachepass::taylor_predict_apply", mutates_args=())
def _taylor_predict_apply_op(
    derivs: List[torch.Tensor], distance: float, base: Optional[torch.Tensor]
) -> torch.Tensor:
    """``derivs`` are the leading non-None terms (the wrapper stops at the first None)."""
    if derivs and backend_for(derivs[0]) == "triton" and len(derivs) <= MAX_ORDER + 1:
        out = taylor_predict_apply_triton(list(derivs), distance, base)
    else:
        out = taylor_predict_apply_reference(list(derivs), distance, base)
    return _unaliased(out, [*derivs, base])


@_taylor_predict_apply_op.register_fake
def _(derivs, distance, base):
    terms = _ts._predict_terms(list(derivs), base)
    ref = base if base is not None else terms[0]
    return ref.new_empty(ref.shape)


OPS = {
    "fused_residual_diff": torch.ops.dit_cachepass.fused_residual_diff.default,
    "rel_l1_diff": torch.ops.dit_cachepass.rel_l1_diff.default,
    "apply_residuals": torch.ops.dit_cachepass.apply_residuals.default,
    "apply_residuals_": torch.ops.dit_cachepass.apply_residuals_.default,
    "taylor_update": torch.ops.dit_cachepass.taylor_update.default,
    "taylor_predict_apply": torch.ops.dit_cachepass.taylor_predict_apply.default,
}
"""The registered ``torch.ops.dit_cachepass`` overloads, by name (for opcheck, export checks)."""


# ------------------------------------------------------------------- public API
def _traced() -> bool:
    """Inside dynamo, torch.export, make_fx or a fake/flop-counting mode: go through the
    custom op (its fake implementation traces). Otherwise the runtime calls the
    implementation directly: the dispatcher round trip of a custom op costs tens of
    microseconds per call, which a cached step would pay on the host for nothing.

    Thread-local: ``torch.compiler.is_compiling()`` is a process-global flag, True while *any*
    thread compiles, so it counts only with a (thread-local) proxy mode of this thread's own
    (export's pre-dispatch tracing); under dynamo ``is_dynamo_compiling()`` is a constant True."""
    if torch.compiler.is_dynamo_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return True
    if not torch.compiler.is_compiling():
        return False
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None


def fused_residual_diff(
    fn_out: torch.Tensor, fn_in: torch.Tensor, prev_residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fn_out - fn_in, sum|residual - prev| / sum|prev|)`` in one pass; the ratio is a
    0-d fp32 device tensor (+inf without ``prev_residual`` or when ``sum|prev| == 0``,
    NaN on NaN/inf inputs)."""
    if not _traced():
        impl = fused_residual_diff_triton if backend_for(fn_out) == "triton" else fused_residual_diff_reference
        return impl(fn_out, fn_in, prev_residual)
    res, ratio = torch.ops.dit_cachepass.fused_residual_diff(fn_out, fn_in, prev_residual)
    return res, ratio


def rel_l1_diff(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """0-d fp32 ``sum|cur - prev| / sum|prev|`` (same +inf/NaN policy)."""
    if not _traced():
        return (rel_l1_diff_triton if backend_for(cur) == "triton" else rel_l1_diff_reference)(cur, prev)
    return torch.ops.dit_cachepass.rel_l1_diff(cur, prev)


def apply_residuals(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: torch.Tensor | None = None,
    encoder_residual: torch.Tensor | None = None,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(hidden + hidden_residual, encoder + encoder_residual)``, both streams in one
    launch; ``encoder_out`` is None when no encoder stream is given. With ``inplace``
    the bases are updated (op ``apply_residuals_``) and returned."""
    if not _traced():
        return _apply_impl(hidden, hidden_residual, encoder, encoder_residual, inplace)
    if inplace:
        torch.ops.dit_cachepass.apply_residuals_(hidden, hidden_residual, encoder, encoder_residual)
        return hidden, encoder
    outs = torch.ops.dit_cachepass.apply_residuals(hidden, hidden_residual, encoder, encoder_residual)
    return outs[0], (outs[1] if len(outs) > 1 else None)


def taylor_update(
    new_value: torch.Tensor,
    prev_derivs: list[torch.Tensor | None],
    window: float,
    order: int,
    allow_derivs: bool,
) -> list[torch.Tensor | None]:
    """TaylorSeer ladder update (cache-dit 1.5.3 semantics), all orders in one pass:
    ``[D0 (= new_value, made contiguous), D1, ..., D_order]``, None-padded.
    Orders above ``MAX_ORDER`` use the reference even on CUDA."""
    news = torch.ops.dit_cachepass.taylor_update(
        new_value, list(prev_derivs), float(window), int(order), bool(allow_derivs)
    )
    return [new_value.contiguous(), *news] + [None] * (int(order) - len(news))


def taylor_predict_apply(
    derivs: list[torch.Tensor | None], distance: float, base: torch.Tensor | None = None
) -> torch.Tensor:
    """``base + sum_i D[i] * distance**i / i!`` (terms stop at the first None)."""
    terms = []
    for d in derivs:
        if d is None:
            break
        terms.append(d)
    if not terms:  # same error as the implementations, raised before the op (Tensor[] can't be empty-typed)
        raise ValueError("taylor_predict_apply needs derivs[0] (got None or an empty list)")
    return torch.ops.dit_cachepass.taylor_predict_apply(terms, float(distance), base)
