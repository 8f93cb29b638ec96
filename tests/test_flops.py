"""FLOPs accounting: published FLUX.1-dev figure, hand formulas, and FX-graph pieces."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dit_cachepass.compiler.flops import count_flops, count_graph_flops, to_tflops

# cache-dit README / bench: FLUX.1-dev, 1024x1024, 50 steps, calflops (2 FLOPs per MAC).
FLUX_DEV_50_STEPS_TFLOPS = 3726.87


def test_flux1_dev_matches_published_figure_on_meta():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
        )
        dt = torch.bfloat16
        kwargs = dict(
            hidden_states=torch.empty(1, 4096, 64, dtype=dt),          # 1024x1024 -> 64x64 packed
            encoder_hidden_states=torch.empty(1, 512, 4096, dtype=dt),  # T5, 512 tokens
            pooled_projections=torch.empty(1, 768, dtype=dt),
            timestep=torch.empty(1, dtype=dt),
            guidance=torch.empty(1, dtype=torch.float32),
            img_ids=torch.empty(4096, 3),
            txt_ids=torch.empty(512, 3),
            return_dict=False,
        )
    model = model.to(dt)
    per_forward = count_flops(model, **kwargs)
    total = to_tflops(50 * per_forward)
    assert total == pytest.approx(FLUX_DEV_50_STEPS_TFLOPS, rel=0.01), total


def test_linear_matches_2mnk():
    M, K, N = 7, 48, 20
    lin = nn.Linear(K, N, bias=True)
    assert count_flops(lin, torch.randn(M, K)) == 2 * M * N * K
    with torch.device("meta"):
        lin_meta = nn.Linear(K, N)
        x = torch.empty(3, M, K)
    assert count_flops(lin_meta, x) == 3 * 2 * M * N * K


def test_sdpa_counted_on_real_cpu_inputs():
    # Stock FlopCounterMode counts 0 for the CPU flash SDPA kernel; count_flops must not.
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    B, H, L, S, D = 2, 3, 16, 24, 8
    q, k, v = torch.randn(B, H, L, D), torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    assert count_flops(Attn(), q, k, v) == 4 * B * H * L * S * D


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.qkv = nn.Linear(32, 96)
        self.out = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.inp(x))
        q, k, v = self.qkv(h).unflatten(-1, (3, 2, 16)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        return self.out(h + a)


@pytest.mark.parametrize("dynamic", [False, True])
def test_graph_flops_of_dynamo_capture_equals_module_flops(dynamic: bool):
    torch._dynamo.reset()
    captured: dict = {}

    def recorder(gm: torch.fx.GraphModule, example_inputs):
        captured["gm"], captured["inputs"] = gm, list(example_inputs)
        return gm.forward

    model = _Tiny()
    x = torch.randn(2, 10, 16)
    torch.compile(model, backend=recorder, dynamic=dynamic)(x)
    graph_flops = count_graph_flops(captured["gm"], captured["inputs"])
    assert graph_flops == count_flops(model, x)
    assert graph_flops > 0
