"""Fn-residual and relative-L1 diff: the per-step "can we skip the middle blocks?" test.

DBCache decides each step whether to skip from ``mean|R_t - R_prev| / mean|R_prev|``
(cache-dit ``similarity``; mean/mean == sum/sum, so we keep sums). Eager torch reads
``fn_out``/``fn_in`` to build the residual, then reads it and ``prev`` again for the diff,
with fp32 temporaries for the upcast. Here one pass reads the three tensors once, writes
the residual and reduces both sums in fp32.

Determinism: a fixed two-stage reduction. Stage 1 gives every program one
``BLOCK``-element tile and it writes its two partial sums to a buffer; stage 2 is one
program that adds the partials in index order. The grid depends only on ``numel`` and
``BLOCK``, never on the GPU, and no float atomics are used, so the same inputs give the
same bits on every run (and on every GPU model for a given ``block_size``).

Ratio policy (shared by kernel and reference, so both backends decide alike):
  * any NaN/inf in the sums (NaN/inf inputs, or fp32 overflow) -> NaN, so ``ratio <
    threshold`` is False and the caller computes;
  * ``sum|prev| == 0`` -> +inf (also when the numerator is 0): nothing to compare
    against, so compute;
  * else ``sum|new - prev| / sum|prev|``.
The ratio is a 0-d fp32 tensor on the input's device: no ``.item()`` sync here.

Non-contiguous inputs are copied with ``.contiguous()`` in the launcher (flat kernels).
"""

import torch

from ._utils import (
    check_float,
    check_nonempty,
    check_same_device,
    check_same_shape,
    cast_to,
    emulate_rne,
    flat_contiguous,
    tl,
    to_f32,
    triton,
)

DEFAULT_BLOCK = 4096
DEFAULT_REDUCE_BLOCK = 1024
FINALIZE_WARPS = 4


def partials_num_warps(block_size: int) -> int:
    """Warps of the stage-1 kernel for a ``block_size`` tile (launcher and AOT check)."""
    return 8 if block_size >= 4096 else 4


# --------------------------------------------------------------------------- kernels
@triton.jit
def _diff_partials_kernel(
    a_ptr,  # fn_out (or cur for rel_l1_diff)
    b_ptr,  # fn_in (unused when HAS_B is False)
    prev_ptr,  # previous residual (unused when HAS_PREV is False)
    res_ptr,  # residual out (unused when WRITE_RES is False)
    partial_ptr,  # fp32 [2, num_programs]: row 0 = sum|r - prev|, row 1 = sum|prev|
    n_elements,
    num_programs,
    HAS_B: tl.constexpr,
    HAS_PREV: tl.constexpr,
    WRITE_RES: tl.constexpr,
    EMULATE_RNE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    # int64 offsets: video latents reach 1e8+ elements, int32 pid*BLOCK would wrap later.
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    r = to_f32(tl.load(a_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if HAS_B:
        r = r - to_f32(tl.load(b_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    if WRITE_RES:
        r_stored = cast_to(r, res_ptr, EMULATE_RNE)
        tl.store(res_ptr + offs, r_stored, mask=mask)
        # Diff the residual as stored (rounded to its dtype): the next step compares
        # against exactly this tensor, and the reference does the same.
        r = to_f32(r_stored, EMULATE_RNE)
    if HAS_PREV:
        p = to_f32(tl.load(prev_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
        num = tl.sum(tl.abs(r - p), axis=0)
        den = tl.sum(tl.abs(p), axis=0)
        tl.store(partial_ptr + pid, num)
        tl.store(partial_ptr + num_programs + pid, den)


@triton.jit
def _ratio_finalize_kernel(
    partial_ptr,
    ratio_ptr,
    num_partials,
    BLOCK: tl.constexpr,
):
    # One program, fixed order: lane j always adds partials j, j+BLOCK, j+2*BLOCK, ...
    idx = tl.arange(0, BLOCK)
    num_acc = tl.zeros([BLOCK], dtype=tl.float32)
    den_acc = tl.zeros([BLOCK], dtype=tl.float32)
    # a while loop, not range(0, num_partials, BLOCK): Triton 3.6's interpreter cannot take a
    # runtime int as a range bound under numpy >= 2.5 (compiled code is the same loop)
    start = 0
    while start < num_partials:
        cur = start + idx
        m = cur < num_partials
        num_acc += tl.load(partial_ptr + cur, mask=m, other=0.0)
        den_acc += tl.load(partial_ptr + num_partials + cur, mask=m, other=0.0)
        start += BLOCK
    num = tl.sum(num_acc, axis=0)
    den = tl.sum(den_acc, axis=0)
    inf = float("inf")
    finite = (num == num) & (den == den) & (num < inf) & (den < inf)
    safe_den = tl.where(den == 0.0, 1.0, den)
    ratio = tl.where(den == 0.0, inf, num / safe_den)
    ratio = tl.where(finite, ratio, float("nan"))
    tl.store(ratio_ptr, ratio)


# ------------------------------------------------------------------------- launchers
def _launch(
    a: torch.Tensor,
    b: torch.Tensor | None,
    prev: torch.Tensor | None,
    write_res: bool,
    block_size: int,
    reduce_block: int,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    n = a.numel()
    a_c = flat_contiguous(a)
    b_c = flat_contiguous(b) if b is not None else a_c
    prev_c = flat_contiguous(prev) if prev is not None else a_c
    res = torch.empty(a.shape, dtype=a.dtype, device=a.device) if write_res else None
    grid_n = triton.cdiv(n, block_size)
    partials = torch.empty(2 * grid_n if prev is not None else 1, dtype=torch.float32, device=a.device)
    num_warps = partials_num_warps(block_size)
    _diff_partials_kernel[(grid_n,)](
        a_c, b_c, prev_c, res if res is not None else a_c, partials, n, grid_n,
        HAS_B=b is not None, HAS_PREV=prev is not None, WRITE_RES=write_res, EMULATE_RNE=emulate_rne(),
        BLOCK=block_size, num_warps=num_warps,
    )
    if prev is None:
        return res, torch.full((), float("inf"), dtype=torch.float32, device=a.device)
    ratio = torch.empty((), dtype=torch.float32, device=a.device)
    _ratio_finalize_kernel[(1,)](partials, ratio, grid_n, BLOCK=reduce_block, num_warps=FINALIZE_WARPS)
    return res, ratio


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    check_float(name_b, b)
    check_same_shape(name_a, a, name_b, b)
    check_same_device([(name_a, a), (name_b, b)])


def _check_residual_args(fn_out: torch.Tensor, fn_in: torch.Tensor, prev: torch.Tensor | None) -> None:
    check_float("fn_out", fn_out)
    check_nonempty("fn_out", fn_out)
    _check_pair("fn_out", fn_out, "fn_in", fn_in)
    if fn_in.dtype != fn_out.dtype:
        raise TypeError(f"dtype mismatch: fn_out is {fn_out.dtype} but fn_in is {fn_in.dtype}")
    if prev is not None:
        _check_pair("fn_out", fn_out, "prev_residual", prev)


def fused_residual_diff_triton(
    fn_out: torch.Tensor,
    fn_in: torch.Tensor,
    prev_residual: torch.Tensor | None,
    *,
    block_size: int = DEFAULT_BLOCK,
    reduce_block: int = DEFAULT_REDUCE_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton: ``residual = fn_out - fn_in`` (fn_out's dtype, contiguous) and the 0-d fp32
    ratio ``sum|residual - prev| / sum|prev|`` (+inf when ``prev_residual`` is None).
    ``block_size``/``reduce_block`` (powers of two) are exposed for tests."""
    _check_residual_args(fn_out, fn_in, prev_residual)
    res, ratio = _launch(fn_out, fn_in, prev_residual, True, block_size, reduce_block)
    assert res is not None
    return res, ratio


def rel_l1_diff_triton(
    cur: torch.Tensor,
    prev: torch.Tensor,
    *,
    block_size: int = DEFAULT_BLOCK,
    reduce_block: int = DEFAULT_REDUCE_BLOCK,
) -> torch.Tensor:
    """Triton: 0-d fp32 ``sum|cur - prev| / sum|prev|`` with the module's ratio policy."""
    check_float("cur", cur)
    check_nonempty("cur", cur)
    _check_pair("cur", cur, "prev", prev)
    return _launch(cur, None, prev, False, block_size, reduce_block)[1]


# ------------------------------------------------------------------------- references
def ratio_from_sums(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """The ratio policy from the module docstring, on 0-d fp32 sums."""
    finite = torch.isfinite(num) & torch.isfinite(den)
    ratio = torch.where(den == 0, torch.full_like(den, float("inf")), num / torch.where(den == 0, 1.0, den))
    return torch.where(finite, ratio, torch.full_like(den, float("nan")))


def rel_l1_diff_reference(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Torch: 0-d fp32 ``sum|cur - prev| / sum|prev|``, sums in fp32."""
    check_float("cur", cur)
    check_nonempty("cur", cur)
    _check_pair("cur", cur, "prev", prev)
    p = prev.float()
    return ratio_from_sums((cur.float() - p).abs().sum(), p.abs().sum())


def fused_residual_diff_reference(
    fn_out: torch.Tensor, fn_in: torch.Tensor, prev_residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch: same contract as :func:`fused_residual_diff_triton`."""
    _check_residual_args(fn_out, fn_in, prev_residual)
    # Subtract in fp32 and round once, like the kernel (and like torch's own bf16 sub).
    residual = (fn_out.float() - fn_in.float()).to(fn_out.dtype).contiguous()
    if prev_residual is None:
        return residual, torch.full((), float("inf"), dtype=torch.float32, device=fn_out.device)
    p = prev_residual.float()
    ratio = ratio_from_sums((residual.float() - p).abs().sum(), p.abs().sum())
    return residual, ratio
