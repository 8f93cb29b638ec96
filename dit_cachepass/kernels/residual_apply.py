"""Apply cached residuals to both streams of a dual-stream DiT in one launch.

On a cached step DBCache replaces the middle blocks with ``hidden += R_h`` and, for
dual-stream models (FLUX, SD3, Qwen-Image), ``encoder += R_e``. The two adds are tiny,
purely memory-bound and back to back, so launch overhead matters at small batch: one
grid covers both flat tensors (programs ``[0, blocks_h)`` do ``hidden``, the rest do
``encoder``), halving the launches of the eager path.

Dtypes: the sum is taken in fp32 and stored in the *base* tensor's dtype (``hidden`` /
``encoder``), so an fp32 cached residual added to a bf16 stream stays bf16 (torch's type
promotion would give fp32). Shapes must match exactly: no broadcasting.

Non-contiguous inputs are copied with ``.contiguous()`` in the launcher (flat kernel);
``inplace=True`` on a non-contiguous base computes out of place, then ``copy_``s back.
"""

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

DEFAULT_BLOCK = 2048


def apply_num_warps(block_size: int) -> int:
    """Warps for a ``block_size`` tile (launcher and AOT check)."""
    return 4 if block_size <= 2048 else 8


# --------------------------------------------------------------------------- kernel
@triton.jit
def _add_tile(x_ptr, r_ptr, out_ptr, tile, n_elements, EMULATE_RNE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = to_f32(tl.load(x_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    r = to_f32(tl.load(r_ptr + offs, mask=mask, other=0.0), EMULATE_RNE)
    tl.store(out_ptr + offs, cast_to(x + r, out_ptr, EMULATE_RNE), mask=mask)


@triton.jit
def _apply_residuals_kernel(
    h_ptr, hr_ptr, ho_ptr, n_h, blocks_h,
    e_ptr, er_ptr, eo_ptr, n_e,
    HAS_E: tl.constexpr,
    EMULATE_RNE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < blocks_h:
        _add_tile(h_ptr, hr_ptr, ho_ptr, pid, n_h, EMULATE_RNE, BLOCK)
    else:
        if HAS_E:
            _add_tile(e_ptr, er_ptr, eo_ptr, pid - blocks_h, n_e, EMULATE_RNE, BLOCK)


# ------------------------------------------------------------------------- launcher
def _check_args(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: torch.Tensor | None,
    encoder_residual: torch.Tensor | None,
) -> None:
    if (encoder is None) != (encoder_residual is None):
        raise ValueError("encoder and encoder_residual must be given together (or both None)")
    pairs = [("hidden", hidden, "hidden_residual", hidden_residual)]
    if encoder is not None:
        pairs.append(("encoder", encoder, "encoder_residual", encoder_residual))
    for name_x, x, name_r, r in pairs:
        check_float(name_x, x)
        check_float(name_r, r)
        check_nonempty(name_x, x)
        check_same_shape(name_x, x, name_r, r)
        check_same_device([("hidden", hidden), (name_x, x), (name_r, r)])


def apply_residuals_triton(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: torch.Tensor | None = None,
    encoder_residual: torch.Tensor | None = None,
    *,
    inplace: bool = False,
    block_size: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton: ``(hidden + hidden_residual, encoder + encoder_residual)`` in one launch.
    Returns ``encoder_out=None`` when no encoder stream is given. With ``inplace`` the
    bases are updated and returned. ``block_size`` (power of two) is exposed for tests."""
    _check_args(hidden, hidden_residual, encoder, encoder_residual)
    streams = [(hidden, hidden_residual)]
    if encoder is not None:
        streams.append((encoder, encoder_residual))
    flat = []  # (x, r, out, writeback target or None)
    for x, r in streams:
        x_c, r_c = flat_contiguous(x), flat_contiguous(r)
        if inplace and x_c is x:
            out, target = x, None
        else:
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            target = x if inplace else None
        flat.append((x_c, r_c, out, target))
    (h, hr, ho, _), n_h = flat[0], hidden.numel()
    blocks_h = triton.cdiv(n_h, block_size)
    if encoder is not None:
        e, er, eo, _ = flat[1]
        n_e = encoder.numel()
        blocks_e = triton.cdiv(n_e, block_size)
    else:
        e, er, eo, n_e, blocks_e = h, hr, ho, 0, 0
    _apply_residuals_kernel[(blocks_h + blocks_e,)](
        h, hr, ho, n_h, blocks_h, e, er, eo, n_e,
        HAS_E=encoder is not None, EMULATE_RNE=emulate_rne(), BLOCK=block_size,
        num_warps=apply_num_warps(block_size),
    )
    results = []
    for _, _, out, target in flat:
        if target is not None:
            target.copy_(out)
            out = target
        results.append(out)
    return results[0], (results[1] if encoder is not None else None)


# ------------------------------------------------------------------------ reference
def apply_residuals_reference(
    hidden: torch.Tensor,
    hidden_residual: torch.Tensor,
    encoder: torch.Tensor | None = None,
    encoder_residual: torch.Tensor | None = None,
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch: same contract as :func:`apply_residuals_triton`."""
    _check_args(hidden, hidden_residual, encoder, encoder_residual)

    def add(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        out = (x.float() + r.float()).to(x.dtype).contiguous()
        return x.copy_(out) if inplace else out

    hidden_out = add(hidden, hidden_residual)
    encoder_out = add(encoder, encoder_residual) if encoder is not None else None
    return hidden_out, encoder_out
