"""TaylorSeer: finite-difference derivative ladder and Taylor forecast (cache-dit 1.5.3).

State is the derivative list ``D[0..order]`` (None-padded). On a computed step cache-dit
rebuilds it from the new value ``Y`` and the previous ladder ``P``::

    D[0] = Y;  D[i+1] = (D[i] - P[i]) / window   while P[i] is not None (and step > 1)

and on a skipped step it forecasts ``sum_i D[i] * distance**i / i!``. Eager torch does one
read-modify-write pass per order (plus fp32 temporaries); the kernels here read ``Y`` and
every ``P[i]`` once, keep the chain in registers and write every ``D[i+1]``
(``taylor_update``), or read every ``D[i]`` (and the residual base) once and write the
forecast (``taylor_predict_apply``).

Precision: the chain runs in fp32 and each ``D[i+1]`` is derived from the fp32 ``D[i]``,
not from its rounded stored copy, then stored in ``Y``'s dtype. For fp32 that is exactly
cache-dit; for bf16/fp16 it is slightly more accurate than cache-dit's per-op rounding.
The forecast coefficients ``distance**i / i!`` are computed in float64 on the host and
passed as fp32 scalars.

The Triton path supports ``order <= MAX_ORDER`` (cache-dit's default is 1, 2 is the
common maximum); larger orders raise ``ValueError`` there (the reference has no limit).
Non-contiguous inputs are copied with ``.contiguous()`` in the launchers (flat kernels).
"""

import math

import torch

from ._utils import (
    cast_to,
    check_float,
    check_nonempty,
    check_same_device,
    check_same_shape,
    emulate_rne,
    flat_contiguous,
    tl,
    to_f32,
    triton,
)

DEFAULT_BLOCK = 1024
MAX_ORDER = 4
NUM_WARPS = 4  # both kernels, any block size (launchers and AOT check)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _chain_step(d, p_ptr, o_ptr, offs, mask, window, EMULATE_RNE: tl.constexpr):
    p = to_f32(tl.load(p_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    d = (d - p) / window
    tl.store(o_ptr + offs, cast_to(d, o_ptr, EMULATE_RNE), mask=mask)
    return d


@triton.jit
def _taylor_update_kernel(
    y_ptr,
    p0_ptr, p1_ptr, p2_ptr, p3_ptr,  # previous D[0..3]; only the first N_NEW are read
    o1_ptr, o2_ptr, o3_ptr, o4_ptr,  # new D[1..4]; only the first N_NEW are written
    n_elements,
    window,
    N_NEW: tl.constexpr,
    EMULATE_RNE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    d = to_f32(tl.load(y_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if N_NEW >= 1:
        d = _chain_step(d, p0_ptr, o1_ptr, offs, mask, window, EMULATE_RNE)
    if N_NEW >= 2:
        d = _chain_step(d, p1_ptr, o2_ptr, offs, mask, window, EMULATE_RNE)
    if N_NEW >= 3:
        d = _chain_step(d, p2_ptr, o3_ptr, offs, mask, window, EMULATE_RNE)
    if N_NEW >= 4:
        d = _chain_step(d, p3_ptr, o4_ptr, offs, mask, window, EMULATE_RNE)


@triton.jit
def _taylor_predict_kernel(
    d0_ptr, d1_ptr, d2_ptr, d3_ptr, d4_ptr,  # only the first N_TERMS are read
    c1, c2, c3, c4,  # distance**i / i! as fp32
    base_ptr,
    out_ptr,
    n_elements,
    N_TERMS: tl.constexpr,
    HAS_BASE: tl.constexpr,
    EMULATE_RNE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    # Same summation order as cache-dit: D0 + c1*D1 + c2*D2 + ..., then base + forecast.
    acc = to_f32(tl.load(d0_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if N_TERMS >= 2:
        acc += c1 * to_f32(tl.load(d1_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if N_TERMS >= 3:
        acc += c2 * to_f32(tl.load(d2_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if N_TERMS >= 4:
        acc += c3 * to_f32(tl.load(d3_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if N_TERMS >= 5:
        acc += c4 * to_f32(tl.load(d4_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if HAS_BASE:
        acc = to_f32(tl.load(base_ptr + offs, mask=mask, other=0.0), EMULATE_RNE) + acc
    tl.store(out_ptr + offs, cast_to(acc, out_ptr, EMULATE_RNE), mask=mask)


# -------------------------------------------------------------------- shared checks
def _num_new_derivs(
    new_value: torch.Tensor, prev_derivs: list[torch.Tensor | None], order: int, allow_derivs: bool
) -> int:
    """How many D[i+1] cache-dit computes: up to ``order``, stopping at the first
    missing previous derivative. A previous ladder of another shape counts as missing
    (cache-dit resets the state on a shape change)."""
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    if not allow_derivs:
        return 0
    k = 0
    while k < order and k < len(prev_derivs) and prev_derivs[k] is not None:
        if prev_derivs[k].shape != new_value.shape:
            break
        k += 1
    return k


def _check_update_args(new_value: torch.Tensor, prev: list[torch.Tensor | None], k: int, window: float) -> None:
    check_float("new_value", new_value)
    check_nonempty("new_value", new_value)
    for i in range(k):
        check_float(f"prev_derivs[{i}]", prev[i])
        check_same_device([("new_value", new_value), (f"prev_derivs[{i}]", prev[i])])
    if k and window == 0:
        raise ValueError("window must be non-zero when derivatives are computed")


def _predict_terms(derivs: list[torch.Tensor | None], base: torch.Tensor | None) -> list[torch.Tensor]:
    terms: list[torch.Tensor] = []
    for d in derivs:
        if d is None:
            break
        terms.append(d)
    if not terms:
        raise ValueError("taylor_predict_apply needs derivs[0] (got None or an empty list)")
    check_float("derivs[0]", terms[0])
    check_nonempty("derivs[0]", terms[0])
    for i, d in enumerate(terms[1:], start=1):
        check_float(f"derivs[{i}]", d)
        check_same_shape("derivs[0]", terms[0], f"derivs[{i}]", d)
        check_same_device([("derivs[0]", terms[0]), (f"derivs[{i}]", d)])
    if base is not None:
        check_float("base", base)
        check_same_shape("derivs[0]", terms[0], "base", base)
        check_same_device([("derivs[0]", terms[0]), ("base", base)])
    return terms


def taylor_coefficients(distance: float, n_terms: int) -> list[float]:
    """``distance**i / i!`` for i < n_terms, in float64 (cast to fp32 by the consumers)."""
    return [float(distance) ** i / math.factorial(i) for i in range(n_terms)]


# ------------------------------------------------------------------------ launchers
def taylor_update_triton(
    new_value: torch.Tensor,
    prev_derivs: list[torch.Tensor | None],
    window: float,
    order: int,
    allow_derivs: bool,
    *,
    block_size: int = DEFAULT_BLOCK,
) -> list[torch.Tensor | None]:
    """Triton: the new ladder ``[D0, D1, ..., D_order]`` (None-padded). ``D0`` is
    ``new_value`` itself (made contiguous if needed), as in cache-dit; the derivatives
    are fresh contiguous tensors in ``new_value``'s dtype, all written in one pass."""
    k = _num_new_derivs(new_value, prev_derivs, order, allow_derivs)
    _check_update_args(new_value, prev_derivs, k, window)
    if k > MAX_ORDER:
        raise ValueError(f"the Triton TaylorSeer kernel supports order <= {MAX_ORDER}, got {k} derivatives to update")
    y = flat_contiguous(new_value)
    out: list[torch.Tensor | None] = [y] + [None] * order
    if k == 0:
        return out
    prev = [flat_contiguous(prev_derivs[i]) for i in range(k)]
    news = [torch.empty(y.shape, dtype=y.dtype, device=y.device) for _ in range(k)]
    prev_args = prev + [y] * (MAX_ORDER - k)  # unused slots: any valid pointer
    new_args = news + [y] * (MAX_ORDER - k)
    n = y.numel()
    _taylor_update_kernel[(triton.cdiv(n, block_size),)](
        y, *prev_args, *new_args, n, float(window),
        N_NEW=k, EMULATE_RNE=emulate_rne(), BLOCK=block_size, num_warps=NUM_WARPS,
    )
    out[1 : k + 1] = news
    return out


def taylor_predict_apply_triton(
    derivs: list[torch.Tensor | None],
    distance: float,
    base: torch.Tensor | None = None,
    *,
    block_size: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """Triton: ``base + sum_i D[i] * distance**i / i!`` (terms stop at the first None;
    no base -> just the forecast). Output: contiguous, ``base``'s dtype if given, else
    ``D[0]``'s."""
    terms = _predict_terms(derivs, base)
    if len(terms) > MAX_ORDER + 1:
        raise ValueError(f"the Triton TaylorSeer kernel supports order <= {MAX_ORDER}, got {len(terms) - 1}")
    d = [flat_contiguous(t) for t in terms]
    coefs = taylor_coefficients(distance, len(terms))[1:]
    coefs += [0.0] * (MAX_ORDER - len(coefs))
    ref = base if base is not None else terms[0]
    out = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
    base_c = flat_contiguous(base) if base is not None else d[0]
    n = out.numel()
    _taylor_predict_kernel[(triton.cdiv(n, block_size),)](
        *(d + [d[0]] * (MAX_ORDER + 1 - len(d))), *coefs, base_c, out, n,
        N_TERMS=len(terms), HAS_BASE=base is not None, EMULATE_RNE=emulate_rne(), BLOCK=block_size,
        num_warps=NUM_WARPS,
    )
    return out


# ----------------------------------------------------------------------- references
def taylor_update_reference(
    new_value: torch.Tensor,
    prev_derivs: list[torch.Tensor | None],
    window: float,
    order: int,
    allow_derivs: bool,
) -> list[torch.Tensor | None]:
    """Torch: same contract as :func:`taylor_update_triton` (no order limit)."""
    k = _num_new_derivs(new_value, prev_derivs, order, allow_derivs)
    _check_update_args(new_value, prev_derivs, k, window)
    y = flat_contiguous(new_value)
    out: list[torch.Tensor | None] = [y] + [None] * order
    d = y.float()
    for i in range(k):
        d = (d - prev_derivs[i].float()) / float(window)
        out[i + 1] = d.to(y.dtype).contiguous()
    return out


def taylor_predict_apply_reference(
    derivs: list[torch.Tensor | None], distance: float, base: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch: same contract as :func:`taylor_predict_apply_triton` (no order limit)."""
    terms = _predict_terms(derivs, base)
    coefs = taylor_coefficients(distance, len(terms))
    acc = terms[0].float()
    for c, t in zip(coefs[1:], terms[1:]):
        acc = acc + t.float() * torch.tensor(c, dtype=torch.float32)
    if base is not None:
        acc = base.float() + acc
    ref = base if base is not None else terms[0]
    return acc.to(ref.dtype).contiguous()
