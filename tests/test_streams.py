"""Streams are traced by data flow, not only inside runs of identical blocks: heterogeneous
lists, 2-block lists whose last block lost its dead outputs, and chains of short lists
(1 double + 1 single) are cached. Inputs vary slowly (the zoo's tuned drift; toy_inputs 1 % a
step); cached-step tests set the threshold from the reference's own measured diffs."""

import pytest
import torch
from torch import nn

import dit_cachepass as dcp
from dit_cachepass.testing import zoo
from reference_dbcache import assert_caches_like_the_reference
from toy_models import toy_inputs

STEPS = 6


def _out(o):
    return o[0] if isinstance(o, (tuple, list)) else o.sample


def flux(double, single):
    return zoo._builder("FluxTransformer2DModel", dict(zoo.FLUX, num_layers=double, num_single_layers=single))()


def sd3(layers, dual):
    return zoo._builder("SD3Transformer2DModel", dict(zoo.SD3, num_layers=layers,
                                                      dual_attention_layers=tuple(range(dual))))()


def run(model, inputs, steps=STEPS):
    with torch.no_grad():
        return [_out(model(**inputs(s, steps, 1.0), return_dict=False)) for s in range(steps)]


@pytest.mark.parametrize("double,single", [(1, 1), (2, 2), (4, 1), (1, 4)])
def test_flux_double_and_single_lists_chain_for_any_length(double, single):
    inputs = zoo.ZOO["flux"].inputs
    rep = dcp.explain(flux(double, single), **inputs(0, STEPS, 1.0), return_dict=False,
                      cache_config=dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0))
    assert [l.name for l in rep.loops] == ["transformer_blocks+single_transformer_blocks"], str(rep)
    loop = rep.loops[0]
    assert loop.streams == 2 and loop.patterns == {"transformer_blocks": 1, "single_transformer_blocks": 1}
    assert len(loop.middle_blocks) == double + single - 1
    ref = run(flux(double, single), inputs)
    m = dcp.compile(flux(double, single), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                            residual_diff_threshold=0.0), backend="eager", strict=True)
    for a, b in zip(ref, run(m, inputs)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    m = dcp.compile(flux(double, single), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                            residual_diff_threshold=0.5, max_warmup_steps=1),
                    backend="eager", strict=True)
    got = run(m, inputs)
    assert dcp.summary(m).loops[0].cached_steps, "nothing cached at threshold 0.5"
    for a, b in zip(ref, got):
        assert torch.isfinite(b).all() and ((b - a).abs().mean() / a.abs().mean()) < 0.2


@pytest.mark.parametrize("dual", [0, 2])
def test_two_block_lists_cache_like_the_reference(dual):
    """SD3 with 2 blocks: the last (context_pre_only) block lost its encoder output to DCE."""
    inputs = zoo.ZOO["sd3"].inputs
    assert_caches_like_the_reference(lambda: sd3(2, dual), lambda m: run(m, inputs), "transformer_blocks", 1,
                                     B=0, tol=1e-4)


class _Dual(nn.Module):
    """block(hidden_states, encoder_hidden_states, temb) -> (encoder, hidden): joint attention."""

    def __init__(self, d, linear_attention=False, cross=False):
        super().__init__()
        self.linear_attention, self.cross = linear_attention, cross
        self.qkv = nn.Linear(d, 3 * d)
        self.ctx = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.mod = nn.Linear(d, 2 * d)
        self.kv_cross = nn.Linear(d, 2 * d) if cross else None

    def forward(self, hidden_states, encoder_hidden_states, temb):
        n = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        scale, shift = self.mod(temb)[:, None].chunk(2, dim=-1)
        q, k, v = self.qkv(nn.functional.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift).chunk(3, dim=-1)
        if self.linear_attention:  # Sana-style ReLU linear attention
            q, k = q.relu(), k.relu()
            a = q @ (k.transpose(1, 2) @ v) / (q @ k.sum(1, keepdim=True).transpose(1, 2) + 1e-6)
        else:
            a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v
        if self.cross:  # an injection block with an extra cross-attention (BriaFibo-style)
            kc, vc = self.kv_cross(encoder_hidden_states).chunk(2, dim=-1)
            a = a + torch.softmax(q @ kc.transpose(1, 2), dim=-1) @ vc
        x = x + 0.5 * a
        x = x + 0.5 * self.ff(x)
        encoder_hidden_states, hidden_states = x[:, :n] + 0.1 * self.ctx(x[:, :n]), x[:, n:]
        return encoder_hidden_states, hidden_states


class HeteroDiT(nn.Module):
    def __init__(self, kind, d=32, n=6):
        super().__init__()
        self.embed, self.t_embed, self.txt = nn.Linear(8, d), nn.Linear(1, d), nn.Linear(8, d)
        if kind == "alternating":
            blocks = [_Dual(d, linear_attention=i % 2 == 0) for i in range(n)]
        else:
            blocks = [_Dual(d, cross=i == 1) for i in range(n)]
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(d, 8)

    def forward(self, hidden_states, timestep):
        temb = self.t_embed(timestep[:, None] / 1000)
        h = self.embed(hidden_states)
        e = self.txt(hidden_states[:, :4].flip(-1))  # 4 "text" tokens, constant over steps
        for block in self.blocks:
            e, h = block(h, e, temb)
        return self.out(h)


def hetero(kind):
    torch.manual_seed(0)
    return HeteroDiT(kind).eval()


def _toy_run(model, steps=STEPS):
    with torch.no_grad():
        return [model(**toy_inputs(s)) for s in range(steps)]


@pytest.mark.parametrize("kind", ["alternating", "injection"])
def test_heterogeneous_lists_are_traced_and_cached_like_the_reference(kind):
    rep = dcp.explain(hetero(kind), **toy_inputs(0), cache_config=dcp.DBCacheConfig(Fn_compute_blocks=1))
    assert [l.name for l in rep.loops] == ["blocks"] and rep.loops[0].streams == 2, str(rep)
    assert rep.loops[0].pattern == 1
    assert_caches_like_the_reference(lambda: hetero(kind), _toy_run, "blocks", 1)


def _framepack_padded_prompt():
    """HunyuanVideoFramepack as its pipeline calls it: a 256-token prompt of which 25 are real.
    The forward reads the effective length with ``.item()``; under capture_scalar_outputs the
    streams' lengths become data-dependent symbols (u1, u20) nobody knows at compile time."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(0)
    m = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
        has_image_proj=True, image_proj_dim=32, has_clean_x_embedder=True).eval()

    def inputs(s):
        g, idx = torch.Generator().manual_seed(0), torch.arange(12)
        mask = torch.zeros(1, 256)
        mask[:, :25] = 1
        return dict(hidden_states=torch.randn(1, 4, 3, 4, 4, generator=g) * (1 - 0.1 * s),
                    timestep=torch.full((1,), 1000.0 - 100 * s), encoder_hidden_states=torch.randn(1, 256, 16, generator=g),
                    encoder_attention_mask=mask, pooled_projections=torch.randn(1, 8, generator=g),
                    image_embeds=torch.randn(1, 4, 32, generator=g), indices_latents=idx[9:12],
                    guidance=torch.full((1,), 4500.0), latents_clean=torch.randn(1, 4, 2, 4, 4, generator=g),
                    indices_latents_clean=torch.cat([idx[0:1], idx[8:9]]),
                    latents_history_2x=torch.randn(1, 4, 2, 4, 4, generator=g), indices_latents_history_2x=idx[6:8],
                    latents_history_4x=torch.randn(1, 4, 16, 4, 4, generator=g),
                    indices_latents_history_4x=torch.arange(1, 17), return_dict=False)
    return m, inputs


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_data_dependent_stream_lengths_never_guard_and_both_lists_chain(threshold):
    """Issue 24.5: the match stage compared such a length with a number (``Eq(u1, 25)``), dynamo
    refused to guard on it (GuardOnDataDependentSymNode), and the model fell through to the block
    path. Sizes are now compared without guards. Threshold 0.5 on a random model: steps cache."""
    import copy

    m, inputs = _framepack_padded_prompt()
    ref = copy.deepcopy(m)
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                     max_warmup_steps=1), backend="eager")
    with torch.no_grad(), dcp.generation(m):
        outs = [m(**inputs(s))[0] for s in range(STEPS)]
    assert m._dit_cachepass.paths.name == "graph (scalar/dynamic-output capture)"
    (loop,) = dcp.summary(m).loops
    assert loop.name == "transformer_blocks+single_transformer_blocks"
    if threshold == 0.0:
        with torch.no_grad():
            for s, out in enumerate(outs):
                torch.testing.assert_close(out, ref(**inputs(s))[0], rtol=0, atol=0)
    else:
        assert loop.cached_steps and all(torch.isfinite(o).all() for o in outs)
