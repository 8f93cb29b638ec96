"""Roofline *projection* (not measured) of the kernels against a FLUX.1-dev step.

    python -m dit_cachepass.kernels.roofline
    python -m dit_cachepass.kernels.aot --roofline    # after the AOT table

Every kernel is memory-bound (a few FLOPs per element), so its floor is bytes moved /
HBM bandwidth: H100 SXM 3.35 TB/s, H200 4.8 TB/s. Bytes moved counts each tensor the
op must read or write once (what an ideal fused kernel does; the Triton kernels do
exactly that, plus the tiny fp32 partial-sum buffer of the two-stage reduction).

The transformer step is compute-bound; its floor is FLOPs / dense bf16 tensor
throughput, 989 TFLOP/s on both H100 SXM and H200 (same GH100 compute). FLOPs are
counted from FLUX.1-dev's architecture (diffusers ``FluxTransformer2DModel``: hidden
3072 = 24 heads x 128, 19 dual-stream + 38 single-stream blocks, MLP ratio 4, joint
attention over 4096 image + 512 text tokens, batch 1, guidance-distilled: one forward
per step): 2 FLOPs per multiply-add of every linear layer over the tokens it sees, plus
``4 * N^2 * hidden`` for attention (QK^T and AV). Elementwise work (norms, RoPE,
softmax, gates) is left out. This is less than the folk ``2 * params * tokens``: the
AdaLN modulation linears (~1/3 of a dual block's weights, 1/5 of a single block's) run
on one conditioning vector, not on every token, and each dual-block stream's weights
see only that stream's tokens.

Both columns are lower bounds at 100% of peak; real kernels reach 80-90% of HBM
bandwidth and real steps 40-60% MFU, so the real overhead fraction is about the
projected one or smaller.
"""

from dataclasses import dataclass

HBM_GBPS = {"H100 SXM": 3350.0, "H200": 4800.0}
DENSE_BF16_TFLOPS = {"H100 SXM": 989.0, "H200": 989.0}

# FLUX.1-dev (black-forest-labs/FLUX.1-dev transformer/config.json)
HIDDEN = 3072
N_DUAL, N_SINGLE = 19, 38
MLP_RATIO = 4
IN_CHANNELS = 64  # 16 latent channels x 2x2 patch
T5_DIM, CLIP_DIM, TIME_DIM = 4096, 768, 256
IMG_TOKENS, TXT_TOKENS = 4096, 512  # 1024x1024 image, 512-token T5 prompt
BYTES = 2  # bf16


def flux_params(d: int = HIDDEN) -> int:
    """Weights + biases of FluxTransformer2DModel (cross-check: ~11.9e9)."""
    lin = lambda i, o: i * o + o  # noqa: E731
    m = MLP_RATIO * d
    head = 128
    dual_stream = lin(d, 6 * d) + lin(d, 3 * d) + lin(d, d) + lin(d, m) + lin(m, d) + 2 * head
    single = lin(d, 3 * d) + lin(d, 3 * d + m) + lin(d + m, d) + 2 * head
    embed = (lin(IN_CHANNELS, d) + lin(T5_DIM, d) + 2 * (lin(TIME_DIM, d) + lin(d, d))
             + lin(CLIP_DIM, d) + lin(d, d) + lin(d, 2 * d) + lin(d, IN_CHANNELS))
    return N_DUAL * 2 * dual_stream + N_SINGLE * single + embed


def flux_step_flops(n_img: int = IMG_TOKENS, n_txt: int = TXT_TOKENS, d: int = HIDDEN) -> dict[str, float]:
    """Forward FLOPs of one FLUX.1-dev step (batch 1), by part."""
    n = n_img + n_txt
    m = MLP_RATIO * d
    attn = 4 * n * n * d  # QK^T + AV over the joint sequence, all heads
    # dual block: per stream qkv (3d) + out proj (d) + MLP (d->m->d) over its own tokens
    dual_linear = sum(2 * ns * (d * 3 * d + d * d + 2 * d * m) for ns in (n_img, n_txt))
    dual_mod = 2 * 2 * d * 6 * d  # AdaLN linears, one conditioning vector per stream
    # single block: linear1 d -> 3d + m, linear2 d + m -> d over all tokens
    single_linear = 2 * n * (d * (3 * d + m) + (d + m) * d)
    single_mod = 2 * d * 3 * d
    embed = (2 * n_img * IN_CHANNELS * d + 2 * n_txt * T5_DIM * d + 2 * n_img * d * IN_CHANNELS
             + 2 * (2 * (TIME_DIM * d + d * d) + CLIP_DIM * d + d * d + d * 2 * d))
    return {
        "dual blocks": N_DUAL * (dual_linear + dual_mod + attn),
        "single blocks": N_SINGLE * (single_linear + single_mod + attn),
        "embeddings + head": embed,
        "one dual block": dual_linear + dual_mod + attn,
    }


@dataclass
class KernelCall:
    op: str
    traffic: str  # which tensors are read / written
    nbytes: int


def kernel_calls(n_img: int = IMG_TOKENS, n_txt: int = TXT_TOKENS, d: int = HIDDEN) -> list[KernelCall]:
    """One call of each op at FLUX.1-dev shapes, bf16 (image stream 4096x3072, text 512x3072)."""
    from . import residual_diff as rd

    img, txt = n_img * d, n_txt * d
    partials = -(-img // rd.DEFAULT_BLOCK)
    red = 2 * partials * 4 * 2 + 4  # fp32 partial sums written + read back, 0-d ratio
    return [
        KernelCall("fused_residual_diff", "read fn_out, fn_in, prev (img); write residual (img)",
                   4 * img * BYTES + red),
        KernelCall("rel_l1_diff", "read cur, prev (img)", 2 * img * BYTES + red),
        KernelCall("apply_residuals", "read hidden, R_h (img), encoder, R_e (txt); write both",
                   3 * (img + txt) * BYTES),
        KernelCall("taylor_update order 1", "read Y, P0; write D1 (img)", 3 * img * BYTES),
        KernelCall("taylor_update order 2", "read Y, P0, P1; write D1, D2 (img)", 5 * img * BYTES),
        KernelCall("taylor_predict_apply order 2", "read D0, D1, D2, base; write out (img)", 5 * img * BYTES),
    ]


def projection_rows() -> tuple[list[str], list[list[str]], dict[str, float]]:
    flops = flux_step_flops()
    step_flops = sum(v for k, v in flops.items() if k != "one dual block")
    step_s = {gpu: step_flops / (tf * 1e12) for gpu, tf in DENSE_BF16_TFLOPS.items()}
    headers = ["op (FLUX.1-dev, bf16)", "bytes moved", "MB"]
    for gpu in HBM_GBPS:
        headers += [f"{gpu} us", f"% of step ({gpu})"]
    rows = []
    for call in kernel_calls():
        row = [f"{call.op}: {call.traffic}", f"{call.nbytes:,}", f"{call.nbytes / 1e6:.1f}"]
        for gpu, gbps in HBM_GBPS.items():
            t = call.nbytes / (gbps * 1e9)
            row += [f"{t * 1e6:.1f}", f"{t / step_s[gpu]:.3%}"]
        rows.append(row)
    info = {"step_flops": step_flops, "dual_block_flops": flops["one dual block"], **{
        f"step_s {g}": s for g, s in step_s.items()}, **{f"flops {k}": v for k, v in flops.items()}}
    return headers, rows, info


def print_projection() -> None:
    from ._utils import _table

    headers, rows, info = projection_rows()
    print("Roofline projection (not measured): kernel floor = bytes moved / HBM bandwidth "
          f"(H100 SXM {HBM_GBPS['H100 SXM'] / 1e3:.2f} TB/s, H200 {HBM_GBPS['H200'] / 1e3:.1f} TB/s)")
    print(_table(headers, rows))
    print()
    print("FLUX.1-dev transformer step, projection (not measured): "
          f"{info['step_flops'] / 1e12:.1f} TFLOP per step (batch 1, {IMG_TOKENS}+{TXT_TOKENS} tokens; "
          f"dual blocks {info['flops dual blocks'] / 1e12:.1f}, single blocks "
          f"{info['flops single blocks'] / 1e12:.1f}, embeddings/head {info['flops embeddings + head'] / 1e12:.2f}; "
          f"params {flux_params() / 1e9:.2f}e9, so 2*params*tokens would say "
          f"{2 * flux_params() * (IMG_TOKENS + TXT_TOKENS) / 1e12:.0f}, see module docstring)")
    for gpu, tf in DENSE_BF16_TFLOPS.items():
        s = info[f"step_s {gpu}"]
        print(f"  {gpu}: {s * 1e3:.1f} ms per step at {tf:.0f} TFLOP/s dense bf16 (100% MFU); one dual block "
              f"{info['dual_block_flops'] / (tf * 1e12) * 1e3:.2f} ms")
    # A DBCache Fn=1 Bn=0 cached step: the first dual block runs, then one residual diff and
    # one two-stream apply replace the other 56 blocks.
    calls = {c.op: c.nbytes for c in kernel_calls()}
    cached_bytes = calls["fused_residual_diff"] + calls["apply_residuals"]
    print("DBCache F1B0 cached step, projection (not measured): 1 dual block + fused_residual_diff + "
          "apply_residuals")
    for gpu, tf in DENSE_BF16_TFLOPS.items():
        block_s = info["dual_block_flops"] / (tf * 1e12)
        kern_s = cached_bytes / (HBM_GBPS[gpu] * 1e9)
        print(f"  {gpu}: {block_s * 1e3:.2f} ms block + {kern_s * 1e6:.0f} us kernels = "
              f"{(block_s + kern_s) * 1e3:.2f} ms ({kern_s / (block_s + kern_s):.1%} kernels; "
              f"{(block_s + kern_s) / info[f'step_s {gpu}']:.1%} of a full step)")


if __name__ == "__main__":
    print_projection()
