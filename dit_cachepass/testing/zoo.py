"""A registry of tiny REAL diffusers transformers (random weights, small configs), for CPU
tests and demos.

Every entry is the genuine diffusers class built from a config small enough that one forward
(batch 2, 32-64 image tokens, 8 text tokens) takes a few milliseconds on a CPU, like diffusers'
own model tests, with 4 blocks in each cached block list so that ``Fn_compute_blocks=1,
Bn_compute_blocks=1`` leaves a non-empty middle. ``build()`` seeds ``torch.manual_seed(0)`` and
returns the fp32 model in eval mode.

``ZooEntry.inputs(step, num_steps, noise_scale)`` returns the forward kwargs of one denoising
step (without ``return_dict``; the caller decides). Everything is seeded: equal arguments give
equal tensors. With ``p = step / num_steps``::

    hidden_states = x0 + drift * noise_scale * p * d          # x0, d: fixed random tensors
    timestep      = t_start - t_span * noise_scale * p        # in the units forward expects

Text conditioning is the same at every step. ``noise_scale`` scales the whole step-to-step
variation: 0 gives identical inputs at every step, 1 is the tuned default, larger values make
consecutive steps less alike.

Timestep units follow what each pipeline passes to the transformer: Flux, Flux2, Chroma,
Qwen-Image and AuraFlow take t/1000 in [0, 1] (they scale by 1000 inside); SD3, PixArt,
CogVideoX, HunyuanVideo, HunyuanImage, Wan, LTX, Sana and CogView4 take raw scheduler timesteps
in [0, 1000]; Lumina2 takes 1 - t/1000, which INCREASES with the step
(``timestep_decreasing=False``). The timestep starts at the noisy end (1000, or 1.0) and
covers only ``t_span`` over the run: with random weights the time MLP responds to the
high-frequency sinusoid channels, so a full 1000 -> 0 sweep decorrelates the block modulation
at every step (first-block residual changes of 0.3-1.0 per step), unlike a trained model.
``drift`` and ``t_span`` were tuned so that the first block's residual changes by a relative L1
of about 0.04-0.15 between consecutive steps at ``num_steps=10`` (``ZooEntry.measured``;
recompute with :func:`first_block_residual_diffs`). Fewer steps give proportionally larger
changes.

``graph_breaks`` records whether ``torch.compile(model, backend="eager", fullgraph=True)`` fails
on the entry's forward (torch 2.13, diffusers 0.42.1); all others compiled to one graph with
bit-identical outputs. ``cache_dit_pattern`` is cache-dit's ForwardPattern number for each
list (cache_dit/caching/block_adapters/adapters.py, cache-dit 1.5.3).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ._base import (BATCH, TEXT_LEN, ZOO, ZooEntry, _builder, _entry, _flux_img_ids, _gen,  # noqa: F401
                    _latent, _perturb_zero_init, _register, _t, _text, get)

# --- FLUX.1: 4 double-stream + 4 single-stream blocks; 8x8 packed latent -> 64 tokens
FLUX = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False,
            axes_dims_rope=(4, 6, 6))


def _flux_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            pooled_projections=_text((BATCH, 32), seed=2),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # pipeline passes t/1000 (x1000 inside)
            img_ids=_flux_img_ids(8, 8),
            txt_ids=torch.zeros(TEXT_LEN, 3),
        )
    return inputs


# --- SD3: 4 joint blocks (the last is context_pre_only); 16x16 latent, patch 2 -> 64 tokens
SD3 = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=4,
           joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
           pos_embed_max_size=16)


def _sd3_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            pooled_projections=_text((BATCH, 64), seed=2),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps (0..1000)
        )
    return inputs


# --- PixArt-alpha/sigma: 4 blocks; 16x16 latent, patch 2 -> 64 tokens; predicts learned sigma
PIXART = dict(sample_size=16, num_layers=4, patch_size=2, attention_head_dim=8, num_attention_heads=4,
              caption_channels=32, in_channels=4, cross_attention_dim=32, out_channels=8, attention_bias=True,
              activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
              norm_elementwise_affine=False, norm_eps=1e-6)


def _pixart_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )
    return inputs


# --- CogVideoX: 4 blocks; 2 latent frames of 8x8, patch 2 -> 32 video tokens
COGVIDEOX = dict(num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=32,
                 text_embed_dim=32, num_layers=4, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
                 temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN)


def _cogvideox_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 2, 4, 8, 8), step, num_steps, noise_scale, drift),  # B, F, C, H, W
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 999.0, span),
        )
    return inputs


# --- HunyuanVideo: 4 dual-stream + 4 single-stream blocks; 1 frame of 8x8, patch 1 -> 64 tokens
HUNYUANVIDEO = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                    num_single_layers=4, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                    text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6))


def _hunyuanvideo_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 1, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            pooled_projections=_text((BATCH, 16), seed=2),
            guidance=torch.full((BATCH,), 6000.0),  # the pipeline passes guidance_scale * 1000
        )
    return inputs


# --- Wan 2.1: 4 blocks; 1 frame of 16x16, patch (1, 2, 2) -> 64 tokens
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
           text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _wan_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 1, 16, 16), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
        )
    return inputs


# --- Qwen-Image: 4 dual-stream blocks; packed 8x8 token grid (16 = 4 channels x 2x2) -> 64 tokens
QWENIMAGE = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(8, 4, 4))


def _qwenimage_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_hidden_states_mask=None,  # the pipeline drops an all-ones mask
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000
            img_shapes=[[(1, 8, 8)]] * BATCH,
        )
    return inputs


# --- LTX-Video: 4 blocks; 1 frame of 8x8, patch 1 -> 64 tokens (already patchified: B, tokens, C)
LTX = dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
           cross_attention_dim=32, num_layers=4, caption_channels=32)


def _ltx_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 8), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            num_frames=1, height=8, width=8,
            rope_interpolation_scale=(1 / 25 * 8, 32, 32),  # (vae temporal ratio / frame rate, 32, 32)
        )
    return inputs


# --- FLUX.2: 4 double + 4 single blocks, 4-axis RoPE ids
FLUX2 = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32, mlp_ratio=3.0,
             axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)


def _flux2_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(8), torch.arange(8), torch.arange(1))
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(TEXT_LEN))
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000
            img_ids=img_ids.expand(BATCH, -1, -1),
            txt_ids=txt_ids.expand(BATCH, -1, -1),
            guidance=torch.full((BATCH,), 4.0),
        )
    return inputs


# --- HunyuanImage 2.1: 4 dual + 4 single blocks; 8x8 latent, patch 1 -> 64 tokens
HUNYUANIMAGE = dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                    num_single_layers=4, num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False,
                    text_embed_dim=32, rope_axes_dim=(8, 8))


def _hunyuanimage_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 16, 8, 8), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
        )
    return inputs


# --- Chroma: 4 double + 4 single blocks; Flux-like, with the distilled guidance approximator
CHROMA = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=8,
              approximator_hidden_dim=32, approximator_layers=1)


def _chroma_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000
            img_ids=_flux_img_ids(8, 8),
            txt_ids=torch.zeros(TEXT_LEN, 3),
        )
    return inputs


# --- AuraFlow: 2 MMDiT + 4 single DiT blocks (cache-dit caches the single list); 16x16, patch 2
AURAFLOW = dict(sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=4,
                attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                out_channels=4, pos_embed_max_size=64)


def _auraflow_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000 (embedding scale=1000)
        )
    return inputs


# --- Lumina2: 4 layers (+1 noise and 1 context refiner); 16x16 latent, patch 2 -> 64 tokens
LUMINA2 = dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=4, num_refiner_layers=1,
               num_attention_heads=2, num_kv_heads=1, multiple_of=16, norm_eps=1e-5, axes_dim_rope=(4, 6, 6),
               axes_lens=(32, 32, 32), cap_feat_dim=32)


def _lumina2_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 0.0, -span),  # 1 - t/1000: t=0 is noise, INCREASES with the step
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
        )
    return inputs


# --- Sana: 4 linear-attention blocks; 8x8 latent, patch 1 -> 64 tokens
SANA = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
            num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=32,
            mlp_ratio=2.5, sample_size=8, patch_size=1)


def _sana_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 8, 8), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # x timestep_scale (1.0)
        )
    return inputs


# --- CogView4: 4 blocks; 16x16 latent, patch 2 -> 64 tokens
COGVIEW4 = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=16,
                num_attention_heads=2, text_embed_dim=32, time_embed_dim=16, condition_dim=8, pos_embed_max_size=32,
                sample_size=16, rope_axes_dim=(8, 8))


def _cogview4_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            original_size=torch.tensor([[128.0, 128.0]] * BATCH),
            target_size=torch.tensor([[128.0, 128.0]] * BATCH),
            crop_coords=torch.tensor([[0.0, 0.0]] * BATCH),
        )
    return inputs


# name, class, config, inputs, block lists, cache-dit ForwardPattern per list,
# drift, t_span (model timestep units covered over num_steps; see the module docstring)
_entry("flux", "FluxTransformer2DModel", FLUX, _flux_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 1}, drift=1.0, t_span=0.005,
       measured=(0.098, 0.104, 0.109, 0.109, 0.104, 0.094, 0.081, 0.073, 0.072))
_entry("sd3", "SD3Transformer2DModel", SD3, _sd3_inputs, ["transformer_blocks"], {"transformer_blocks": 1},
       drift=1.0, t_span=10.0,
       measured=(0.074, 0.058, 0.070, 0.099, 0.092, 0.073, 0.076, 0.097, 0.109))
_entry("pixart", "PixArtTransformer2DModel", PIXART, _pixart_inputs, ["transformer_blocks"],
       {"transformer_blocks": 3}, drift=2.0, t_span=50.0,
       measured=(0.047, 0.048, 0.042, 0.039, 0.051, 0.041, 0.047, 0.036, 0.043), output_shape=(BATCH, 8, 16, 16),
       notes="out_channels=8: the sample carries learned sigma (pipelines split it off)")
_entry("cogvideox", "CogVideoXTransformer3DModel", COGVIDEOX, _cogvideox_inputs, ["transformer_blocks"],
       {"transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.112, 0.114, 0.129, 0.116, 0.092, 0.097, 0.100, 0.129, 0.147))
_entry("hunyuanvideo", "HunyuanVideoTransformer3DModel", HUNYUANVIDEO, _hunyuanvideo_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 0, "single_transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.084, 0.078, 0.087, 0.081, 0.070, 0.075, 0.078, 0.077, 0.061))
_entry("wan", "WanTransformer3DModel", WAN, _wan_inputs, ["blocks"], {"blocks": 2}, drift=2.0, t_span=50.0,
       measured=(0.078, 0.072, 0.085, 0.067, 0.051, 0.063, 0.075, 0.070, 0.061))
_entry("qwenimage", "QwenImageTransformer2DModel", QWENIMAGE, _qwenimage_inputs, ["transformer_blocks"],
       {"transformer_blocks": 1}, drift=1.0, t_span=0.005,
       measured=(0.097, 0.100, 0.100, 0.096, 0.088, 0.078, 0.069, 0.064, 0.064))
_entry("ltx", "LTXVideoTransformer3DModel", LTX, _ltx_inputs, ["transformer_blocks"], {"transformer_blocks": 2},
       drift=2.0, t_span=20.0,
       measured=(0.072, 0.072, 0.062, 0.066, 0.056, 0.056, 0.042, 0.038, 0.038))
_entry("flux2", "Flux2Transformer2DModel", FLUX2, _flux2_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 3}, drift=0.7, t_span=0.0025,
       measured=(0.105, 0.106, 0.106, 0.105, 0.103, 0.100, 0.097, 0.093, 0.089))
_entry("hunyuanimage", "HunyuanImageTransformer2DModel", HUNYUANIMAGE, _hunyuanimage_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 0, "single_transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.123, 0.139, 0.145, 0.138, 0.120, 0.112, 0.104, 0.078, 0.073))
_entry("chroma", "ChromaTransformer2DModel", CHROMA, _chroma_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 3}, drift=1.0, t_span=0.001,
       measured=(0.099, 0.096, 0.093, 0.089, 0.086, 0.083, 0.080, 0.077, 0.074))
_entry("auraflow", "AuraFlowTransformer2DModel", AURAFLOW, _auraflow_inputs, ["single_transformer_blocks"],
       {"single_transformer_blocks": 3}, drift=0.8, t_span=0.003,
       measured=(0.108, 0.112, 0.115, 0.117, 0.117, 0.115, 0.110, 0.102, 0.093),
       notes="cache-dit caches only single_transformer_blocks; the 2 joint (MMDiT) blocks run every step")
_entry("lumina2", "Lumina2Transformer2DModel", LUMINA2, _lumina2_inputs, ["layers"], {"layers": 3},
       drift=1.0, t_span=0.9,
       measured=(0.116, 0.113, 0.108, 0.103, 0.097, 0.091, 0.085, 0.079, 0.073),
       timestep_decreasing=False, graph_breaks=True,
       notes="timestep is 1 - t/1000 and INCREASES with the step (Lumina's convention); graph breaks: "
             "data-dependent .item()/.tolist() on encoder_attention_mask (rope embedder, seq_lengths; "
             "transformer_lumina2.py ~273 and ~519)")
_entry("sana", "SanaTransformer2DModel", SANA, _sana_inputs, ["transformer_blocks"], {"transformer_blocks": 3},
       drift=3.0, t_span=200.0,
       measured=(0.055, 0.052, 0.064, 0.052, 0.095, 0.054, 0.048, 0.043, 0.051))
_entry("cogview4", "CogView4Transformer2DModel", COGVIEW4, _cogview4_inputs, ["transformer_blocks"],
       {"transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.089, 0.092, 0.098, 0.086, 0.086, 0.079, 0.069, 0.076, 0.107))

# ----------------------------------------------------------------------------- measuring


def _hidden_out(out: Any, pattern: int) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if pattern == 1:  # (encoder_hidden_states, hidden_states)
        return out[1]
    return out[0]


def first_block_residual_diffs(entry: ZooEntry, num_steps: int = 10, noise_scale: float = 1.0,
                               model: Optional[nn.Module] = None) -> list[float]:
    """Relative L1 change, between consecutive steps, of block 0's hidden-stream residual
    (out_hidden - in_hidden) in the entry's first block list: ``mean|r_s - r_{s-1}| /
    mean|r_{s-1}|`` for s = 1..num_steps-1 (what DBCache with Fn=1 compares)."""
    model = entry.build() if model is None else model
    lst = entry.block_lists[0]
    pattern = entry.cache_dit_pattern[lst]
    block = getattr(model, lst)[0]
    residuals: list[torch.Tensor] = []

    def hook(mod, args, kwargs, out):
        h_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        residuals.append((_hidden_out(out, pattern) - h_in).detach().double())

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for s in range(num_steps):
                model(**entry.inputs(s, num_steps, noise_scale), return_dict=False)
    finally:
        handle.remove()
    return [((residuals[s] - residuals[s - 1]).abs().mean() / residuals[s - 1].abs().mean()).item()
            for s in range(1, len(residuals))]


# ----------------------------------------------------------------------------- coverage matrix
# one entry per remaining diffusers transformer class with a block ModuleList (coverage_only)
from . import zoo_image_a, zoo_image_b, zoo_video_a, zoo_video_b  # noqa: E402,F401  (they import ._base only)
