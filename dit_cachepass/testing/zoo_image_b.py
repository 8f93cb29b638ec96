"""Coverage-matrix zoo entries (see zoo.py for the conventions): tiny real diffusers classes."""

from __future__ import annotations

import torch

from ._base import BATCH, TEXT_LEN, _entry, _flux_img_ids, _latent, _t, _text  # noqa: F401


def _init_empty_params(entry, param_names):
    """Wrap ``entry.build`` so that the named parameters (full dotted names, or just the last component)
    get seeded values N(0, 1/fan_in), fan_in = the second-to-last dimension (the last for vectors).
    Used for parameters the class allocates with ``torch.empty`` and never initialises (only
    ``from_pretrained`` fills them: they would hold whatever memory held, NaN/inf), and for zero-initialised
    projections whose 0.02-std perturbation is too weak to matter."""
    base = entry.build

    def build():
        model = base()
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in param_names or name.rsplit(".", 1)[-1] in param_names:
                    fan_in = p.shape[-2] if p.dim() >= 2 else p.shape[-1]
                    p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        return model

    build.__name__ = base.__name__
    entry.build = build
    return entry



# --- Ideogram 4: 4 blocks over ONE packed sequence (8 text + 64 image tokens, 16 channels each)
IDEOGRAM4 = dict(in_channels=16, num_layers=4, attention_head_dim=16, num_attention_heads=2, intermediate_size=64,
                 adaln_dim=16, llm_features_dim=32, rope_theta=10_000, mrope_section=(4, 2, 2), norm_eps=1e-5)


def _ideogram4_inputs(drift, span):
    from diffusers.models.transformers.transformer_ideogram4 import (
        IMAGE_POSITION_OFFSET, LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR)

    seq = TEXT_LEN + 64
    pos = torch.zeros(seq, 3, dtype=torch.long)
    pos[:TEXT_LEN] = torch.arange(TEXT_LEN)[:, None]
    pos[TEXT_LEN:] = _flux_img_ids(8, 8).long() + IMAGE_POSITION_OFFSET
    indicator = torch.full((BATCH, seq), OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
    indicator[:, :TEXT_LEN] = LLM_TOKEN_INDICATOR

    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        hs = torch.zeros(BATCH, seq, 16)
        hs[:, TEXT_LEN:] = _latent((BATCH, 64, 16), step, num_steps, noise_scale, drift)
        ehs = torch.zeros(BATCH, seq, 32)
        ehs[:, :TEXT_LEN] = _text((BATCH, TEXT_LEN, 32))
        return dict(
            hidden_states=hs,
            # model time 1 - t/1000 in [0, 1]: 0 is noise, INCREASES with the step
            timestep=_t(step, num_steps, noise_scale, 0.0, -span),
            encoder_hidden_states=ehs,
            position_ids=pos.expand(BATCH, -1, -1).clone(),
            segment_ids=torch.ones(BATCH, seq, dtype=torch.long),
            indicator=indicator.clone(),
        )
    return inputs


_entry("ideogram4", "Ideogram4Transformer2DModel", IDEOGRAM4, _ideogram4_inputs, ["layers"], {"layers": 3},
       drift=1.0, t_span=0.001, timestep_decreasing=False, coverage_only=True,
       measured=(0.058, 0.051, 0.054, 0.059, 0.052, 0.047, 0.049, 0.047, 0.053),
       notes="one packed text+image sequence (indicator/segment_ids/position_ids); timestep is 1 - t/1000 and "
             "INCREASES with the step")


# --- Krea 2: 4 single-stream blocks over [text; image] (1 layerwise + 1 refiner text-fusion block)
KREA2 = dict(in_channels=16, num_layers=4, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
             intermediate_size=64, timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=3,
             text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=32,
             num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(8, 4, 4), rope_theta=1000.0,
             norm_eps=1e-5)


def _krea2_inputs(drift, span):
    pos = torch.zeros(TEXT_LEN + 64, 3)
    pos[TEXT_LEN:] = _flux_img_ids(8, 8)

    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 3, 16)),  # tapped text-encoder layers
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000
            position_ids=pos.clone(),
            encoder_attention_mask=None,
        )
    return inputs


_entry("krea2", "Krea2Transformer2DModel", KREA2, _krea2_inputs, ["transformer_blocks"], {"transformer_blocks": 3},
       drift=1.0, t_span=0.005, coverage_only=True,
       measured=(0.136, 0.134, 0.131, 0.128, 0.122, 0.111, 0.099, 0.096, 0.098),
       notes="blocks run over the concatenated [text; image] sequence; text goes through a small text-fusion stack")


# --- LongCat-Image: Flux-like, 4 double + 4 single blocks; 8x8 packed latent -> 64 tokens
LONGCATIMAGE = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
                    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))


def _flux_like_inputs(drift, span):
    """FLUX.1-style inputs without pooled projections (LongCat-Image, Ovis-Image)."""
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000 (x1000 inside)
            img_ids=_flux_img_ids(8, 8),
            txt_ids=torch.zeros(TEXT_LEN, 3),
        )
    return inputs


_entry("longcatimage", "LongCatImageTransformer2DModel", LONGCATIMAGE, _flux_like_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 1}, drift=1.0, t_span=0.005, coverage_only=True,
       measured=(0.102, 0.105, 0.105, 0.101, 0.095, 0.087, 0.078, 0.070, 0.067),
       notes="the `guidance` argument is accepted but unused by the model (no guidance embedder)")


# --- Ovis-Image: Flux-like, 4 double + 4 single blocks; 8x8 packed latent -> 64 tokens
OVISIMAGE = dict(patch_size=1, in_channels=16, out_channels=16, num_layers=4, num_single_layers=4,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))


_entry("ovisimage", "OvisImageTransformer2DModel", OVISIMAGE, _flux_like_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 1}, drift=1.0, t_span=0.005, coverage_only=True,
       measured=(0.106, 0.107, 0.106, 0.103, 0.099, 0.091, 0.083, 0.074, 0.070))


# --- Lumina-Next: 4 blocks; 16x16 latent, patch 2 -> 64 tokens; complex 2D RoPE passed in by the caller
LUMINANEXT = dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=4, num_attention_heads=2,
                  num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, learn_sigma=False,
                  qk_norm=True, cross_attention_dim=32, scaling_factor=1.0)


def _luminanext_inputs(drift, span):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    rope = get_2d_rotary_pos_embed_lumina(16, 32, 32)  # head_dim 16; the pipeline uses a 384 x 384 grid

    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 0.0, -span),  # 1 - t/1000: INCREASES with the step
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_mask=torch.ones(BATCH, TEXT_LEN),
            image_rotary_emb=rope,
            cross_attention_kwargs={},  # the blocks do **cross_attention_kwargs (None fails)
        )
    return inputs


_entry("luminanext", "LuminaNextDiT2DModel", LUMINANEXT, _luminanext_inputs, ["layers"], {"layers": 3},
       drift=1.0, t_span=0.1, timestep_decreasing=False, coverage_only=True,
       measured=(0.118, 0.114, 0.109, 0.104, 0.097, 0.090, 0.083, 0.076, 0.070),
       notes="timestep is 1 - t/1000 and INCREASES with the step; image_rotary_emb is a complex (32, 32, 8) "
             "tensor from get_2d_rotary_pos_embed_lumina")


# --- NucleusMoE-Image: 4 blocks (block 0 dense, blocks 1-3 expert-choice MoE with 4 experts); packed 8x8 grid
NUCLEUSMOE = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(8, 4, 4), mlp_ratio=6.0,
                  moe_enabled=True, dense_moe_strategy="leave_first_block_dense", num_experts=4,
                  moe_intermediate_dim=32, capacity_factors=2.0)


def _nucleusmoe_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            img_shapes=[(1, 8, 8)] * BATCH,
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_hidden_states_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000
        )
    return inputs


_init_empty_params(_entry(
       "nucleusmoe", "NucleusMoEImageTransformer2DModel", NUCLEUSMOE, _nucleusmoe_inputs, ["transformer_blocks"],
       {"transformer_blocks": 2}, drift=0.7, t_span=0.003, coverage_only=True,
       measured=(0.113, 0.111, 0.114, 0.121, 0.127, 0.131, 0.133, 0.133, 0.132),
       notes="MoE: blocks 1-3 route tokens with expert-choice top-k (capacity 32 of 64 tokens per expert) plus a "
             "shared expert; text enters every block as encoder_hidden_states (constant, P2). The expert weights "
             "(gate_up_proj, down_proj) are torch.empty in __init__, so build() seeds them; mlp_ratio=6 because "
             "the dense MLP width is rounded DOWN to a multiple of 128 (0 for smaller ratios at dim 32). "
             "fullgraph=True compiles, but a default (non-fullgraph) dynamo trace breaks 10 times at "
             "num_tokens_per_expert.tolist() (SwiGLUExperts._run_experts_for_loop, data-dependent), so the pass "
             "sees 11 graphs"),
    {"gate_up_proj", "down_proj"})


# --- OmniGen: 4 decoder layers over [8 text-token embeddings; time token; 64 image tokens] (16x16, patch 2)
OMNIGEN = dict(in_channels=4, patch_size=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
               intermediate_size=64, num_layers=4, pad_token_id=0, vocab_size=100, pos_embed_max_size=16,
               time_step_dim=16, rope_scaling={"long_factor": [1.0] * 8, "short_factor": [1.0] * 8})


def _omnigen_inputs(drift, span):
    seq = TEXT_LEN + 1 + 64
    input_ids = torch.randint(1, 100, (BATCH, TEXT_LEN), generator=torch.Generator().manual_seed(3))

    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            # scheduler: invert_sigmas=True, num_train_timesteps=1 -> t in [0, 1], 0 is noise, INCREASES
            timestep=_t(step, num_steps, noise_scale, 0.0, -span),
            input_ids=input_ids.clone(),
            input_img_latents=[],
            input_image_sizes={},
            attention_mask=torch.ones(BATCH, seq, seq),
            position_ids=torch.arange(seq).expand(BATCH, -1).clone(),
        )
    return inputs


_entry("omnigen", "OmniGenTransformer2DModel", OMNIGEN, _omnigen_inputs, ["layers"], {"layers": 3},
       drift=1.0, t_span=0.1, timestep_decreasing=False, coverage_only=True, graph_breaks=True,
       measured=(0.045, 0.044, 0.044, 0.043, 0.043, 0.042, 0.042, 0.041, 0.041),
       notes="graph breaks: data-dependent branching on seq_len = torch.max(position_ids) + 1 in the SuScaled "
             "rotary embedding (transformer_omnigen.py ~154), before the layer loop; "
             "text enters as token ids (embedded inside) and the timestep as an extra token, all in one sequence; "
             "no input images; timestep in [0, 1] INCREASES with the step (0 is noise)")


# --- PRX (Photoroom): 4 blocks; 16x16 latent, patch 2 -> 64 tokens; text cross-attended in every block
PRX = dict(in_channels=4, patch_size=2, context_in_dim=32, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=4,
           axes_dim=[8, 8], theta=10_000)


def _prx_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000 (x1000 inside)
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            attention_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
        )
    return inputs


_entry("prx", "PRXTransformer2DModel", PRX, _prx_inputs, ["blocks"], {"blocks": 3}, drift=1.0, t_span=0.005,
       perturb_zero_init=True, coverage_only=True,
       measured=(0.132, 0.127, 0.120, 0.112, 0.107, 0.106, 0.108, 0.106, 0.099),
       notes="cache-dit says P3; the block takes encoder_hidden_states (constant text) and returns only "
             "hidden_states, which is P2 by shape. The block modulation (PRXModulation.lin) is zero-initialised: "
             "random blocks are identities")


# --- Qwen-Image 2.1: 4 single-stream blocks over the joint [8 text; 64 image] sequence (8x8 grid, patch 1)
QWENIMAGE21 = dict(patch_size=1, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=16,
                   num_attention_heads=2, context_in_dim=32, mlp_ratio=2, axes_dims_rope=(8, 4, 4))


def _qwenimage21_inputs(drift, span):
    # one vision-language slot per 2x2 group of target latents, after the text
    img_mask = torch.zeros(BATCH, TEXT_LEN + 16, dtype=torch.bool)
    img_mask[:, TEXT_LEN:] = True

    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000
            img_shapes=[[(1, 8, 8)]] * BATCH,
            img_mask=img_mask.clone(),
            encoder_hidden_states_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
        )
    return inputs


_entry("qwenimage21", "QwenImage21Transformer2DModel", QWENIMAGE21, _qwenimage21_inputs, ["transformer_blocks"],
       {"transformer_blocks": 3}, drift=0.7, t_span=0.003, output_shape=(BATCH, TEXT_LEN + 64, 16),
       coverage_only=True, graph_breaks=True,
       measured=(0.108, 0.108, 0.109, 0.110, 0.110, 0.110, 0.109, 0.105, 0.099),
       notes="graph breaks before the block loop: Tensor.tolist() on the bool image_pad_mask in QwenImage21Rope "
             "(transformer_qwenimage21.py ~689), int((~target_token_mask).sum()) and image_ids.tolist() for the "
             "prefix segments (~967, ~317); the sample covers the whole joint sequence (the pipeline keeps the "
             "last 64 = image tokens); "
             "one shared modulation for all blocks; text/condition tokens modulate from an extra t=0 row "
             "(causal_condition); no KV cache (kv_cache=None)")


# --- Transformer2DModel, DiT configuration (ada_norm_zero, class-conditional): 4 blocks; 16x16, patch 2 -> 64 tokens
DIT2D = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=4,
             sample_size=16, patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
             norm_type="ada_norm_zero", norm_elementwise_affine=False)


def _dit2d_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 999.0, span),  # raw scheduler timesteps (0..999)
            class_labels=torch.tensor([207, 360][:BATCH]),
        )
    return inputs


_entry("dit2d", "Transformer2DModel", DIT2D, _dit2d_inputs, ["transformer_blocks"], {"transformer_blocks": 3},
       drift=1.0, t_span=10.0, output_shape=(BATCH, 8, 16, 16), coverage_only=True,
       measured=(0.060, 0.056, 0.058, 0.061, 0.056, 0.053, 0.054, 0.058, 0.058),
       notes="the legacy Transformer2DModel in DiT form (norm_type='ada_norm_zero', class labels, no text); "
             "out_channels=8: the sample carries learned sigma (the DiT pipeline splits it off)")


# ----------------------------------------------------------------------------- audio / 1D


# --- ACE-Step 1.5: 4 layers (alternating sliding-window / full self-attention + cross-attention); 64 latent frames
# of 8 channels (+16 context channels), patch 2 -> 32 tokens
ACESTEP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
               head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2, rope_theta=10000.0,
               rms_norm_eps=1e-6, sliding_window=16)


def _acestep_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        t = _t(step, num_steps, noise_scale, 1.0, span)  # flow sigma in [0, 1] (x1000 inside)
        return dict(
            hidden_states=_latent((BATCH, 64, 8), step, num_steps, noise_scale, drift),
            timestep=t,
            timestep_r=t.clone(),  # the pipeline passes r = t
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            context_latents=_text((BATCH, 64, 16), seed=2),  # source latents + chunk masks (constant)
        )
    return inputs


_entry("acestep", "AceStepTransformer1DModel", ACESTEP, _acestep_inputs, ["layers"], {"layers": 2},
       drift=1.0, t_span=0.005, coverage_only=True,
       measured=(0.047, 0.047, 0.047, 0.047, 0.046, 0.044, 0.043, 0.040, 0.038),
       notes="1D audio latents (B, frames, 8) plus constant context_latents (B, frames, 16), patchified by a Conv1d; "
             "timestep_r = timestep; text enters every block as encoder_hidden_states (constant, P2)")


# --- Stable Audio Open: 4 blocks; 64 latent frames of 8 channels (+1 prepended global token)
STABLEAUDIO = dict(sample_size=64, in_channels=8, num_layers=4, attention_head_dim=16, num_attention_heads=2,
                   num_key_value_attention_heads=1, out_channels=8, cross_attention_dim=32, time_proj_dim=32,
                   global_states_input_dim=32, cross_attention_input_dim=32)


def _stableaudio_inputs(drift, span):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    # as the pipeline: rotary over head_dim // 2, for the latent frames + the prepended global token
    rope = get_1d_rotary_pos_embed(8, 64 + 1, use_real=True, repeat_interleave_real=False)

    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 8, 64), step, num_steps, noise_scale, drift),  # B, C, frames
            # EDM-preconditioned noise level atan(sigma) * 2 / pi in [0, 1): ~1 at the noisy end, decreasing
            timestep=_t(step, num_steps, noise_scale, 0.99, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            global_hidden_states=_text((BATCH, 1, 32), seed=2),  # seconds start/total embeddings
            rotary_embedding=rope,
        )
    return inputs


_entry("stableaudio", "StableAudioDiTModel", STABLEAUDIO, _stableaudio_inputs, ["transformer_blocks"],
       {"transformer_blocks": 3}, drift=1.0, t_span=0.005, coverage_only=True,
       measured=(0.110, 0.109, 0.107, 0.102, 0.095, 0.086, 0.078, 0.071, 0.065),
       notes="1D audio latents (B, 8, frames); a global (duration + time) token is prepended to the sequence; "
             "rotary_embedding is passed in by the caller (cos, sin)")


# --- Stable Audio 3: 4 blocks; 64 latent frames of 8 channels (+2 prepended memory tokens), patch 1
STABLEAUDIO3 = dict(io_channels=8, patch_size=1, embed_dim=32, depth=4, num_heads=2, cond_token_dim=32,
                    global_cond_dim=16, local_add_cond_dim=4, timestep_features_dim=16, ff_mult=2,
                    num_memory_tokens=2, use_differential_attention=False)


def _stableaudio3_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 8, 64), step, num_steps, noise_scale, drift),  # B, C, frames
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # flow time in [0, 1], 1 is noise
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            global_hidden_states=_text((BATCH, 16), seed=2),  # duration embedding
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
        )
    return inputs


_entry("stableaudio3", "StableAudio3DiTModel", STABLEAUDIO3, _stableaudio3_inputs, ["transformer_blocks"],
       {"transformer_blocks": 2}, drift=1.0, t_span=0.005, coverage_only=True,
       measured=(0.119, 0.110, 0.110, 0.105, 0.097, 0.085, 0.083, 0.081, 0.071),
       notes="1D audio latents (B, 8, frames); 2 learned memory tokens are prepended inside; the blocks take the "
             "(constant) text as `context=`, not `encoder_hidden_states=`")


# --- LongCat-AudioDiT: 4 blocks (global AdaLN, self + cross attention); 64 latent frames of 8 channels
LONGCATAUDIO = dict(dit_dim=32, dit_depth=4, dit_heads=2, dit_text_dim=32, latent_dim=8, text_conv=False,
                    ff_mult=2.0)


def _longcataudio_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 8), step, num_steps, noise_scale, drift),  # B, frames, C
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
            # scheduler invert_sigmas=True: t/1000 in [0, 1], 0 is noise, INCREASES (x1000 inside)
            timestep=_t(step, num_steps, noise_scale, 0.0, -span),
            attention_mask=torch.ones(BATCH, 64, dtype=torch.bool),
            latent_cond=torch.zeros(BATCH, 64, 8),  # the pipeline passes zeros (no prompt audio)
        )
    return inputs


_init_empty_params(_entry(
       "longcataudio", "LongCatAudioDiTTransformer", LONGCATAUDIO, _longcataudio_inputs, ["blocks"], {"blocks": 2},
       drift=1.0, t_span=0.05, timestep_decreasing=False, perturb_zero_init=True, coverage_only=True,
       measured=(0.075, 0.064, 0.068, 0.033, 0.056, 0.048, 0.063, 0.053, 0.067),
       notes="1D audio latents (B, frames, 8); the global AdaLN MLP, final norm and proj_out are zero-initialised; "
             "the blocks take the (constant) text as `cond=`; timestep INCREASES with the step (0 is noise); "
             "long skip connection around the block loop. build() also gives adaln_global_mlp's output Linear "
             "N(0, 1/fan_in) weights: with 0.02-std gates the ungated cross-attention (near-uniform over the text, "
             "so nearly step-independent) dominates every block's residual"),
    {"adaln_global_mlp.mlp.1.weight", "adaln_global_mlp.mlp.1.bias"})


# --- Z-Image: 4 single-stream blocks over the unified [64 image; 8 (+24 pad) text] sequence (16x16 latent, patch 2),
# after 1 noise-refiner (image) and 1 context-refiner (text) block
ZIMAGE = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=4, n_refiner_layers=1,
              n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=32, rope_theta=256.0,
              t_scale=1000.0, axes_dims=[4, 6, 6], axes_lens=[64, 16, 16])


def _zimage_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        lat = _latent((BATCH, 4, 1, 16, 16), step, num_steps, noise_scale, drift)  # the pipeline unsqueezes F=1
        text = _text((BATCH, TEXT_LEN, 32))
        return dict(
            x=list(lat.unbind(0)),  # per-sample LISTS, as ZImagePipeline passes them
            # the pipeline passes (1000 - t) / 1000 in [0, 1]: 0 is noise, INCREASES (x t_scale=1000 inside)
            t=_t(step, num_steps, noise_scale, 0.0, -span),
            cap_feats=list(text.unbind(0)),
        )
    return inputs


_entry("zimage", "ZImageTransformer2DModel", ZIMAGE, _zimage_inputs, ["layers"], {"layers": 3},
       drift=1.0, t_span=0.005, timestep_decreasing=False, output_shape=(4, 1, 16, 16), coverage_only=True,
       measured=(0.130, 0.123, 0.119, 0.117, 0.116, 0.114, 0.108, 0.098, 0.088),
       notes="x and cap_feats are per-sample LISTS ((4, 1, 16, 16) latents, (8, 32) text) and the output is a list "
             "of per-sample (4, 1, 16, 16) tensors (output_shape is one sample's); the timestep argument is named "
             "`t` and is (1000 - t)/1000 in [0, 1], INCREASING with the step (0 is noise); the text is padded to 32 "
             "tokens (SEQ_MULTI_OF) with cap_pad_token and the main layers run over [64 image; 32 text]; one "
             "shared adaLN (t_embedder) feeds every modulated block; the blocks take the sequence positionally "
             "as `x` (first_block_residual_diffs hooks args[0]); modulation is NOT zero-initialised (only the "
             "x/cap pad tokens are zeros), so no perturbation; fullgraph=True compiles (bit-identical)")
