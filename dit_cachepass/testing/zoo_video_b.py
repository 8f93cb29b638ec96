"""Coverage-matrix zoo entries (see zoo.py for the conventions): tiny real diffusers classes."""

from __future__ import annotations

import torch

from ._base import BATCH, TEXT_LEN, _entry, _latent, _t, _text  # noqa: F401


def _t_up(step: int, num_steps: int, noise_scale: float, start: float, span: float, batch: int = BATCH):
    """Raw timestep that INCREASES with the step (0..1000 units), for pipelines that pass
    inverted timesteps (Mochi: ``invert_sigmas``, t=0 is noise); ``_t`` would clamp these to [0, 1]."""
    p = step / max(num_steps, 1)
    return torch.full((batch,), min(max(start + span * noise_scale * p, 0.0), 1000.0), dtype=torch.float32)


# --- Mochi: 4 blocks (the last is context_pre_only); 2 latent frames of 8x8, patch 2 -> 32 tokens
MOCHI = dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=4, pooled_projection_dim=16,
             in_channels=4, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
             activation_fn="swiglu", max_sequence_length=TEXT_LEN)


def _mochi_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t_up(step, num_steps, noise_scale, 0.0, span),  # inverted sigmas: 1000 * (1 - sigma)
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
        )
    return inputs


# --- Latte: 4 spatial + 4 temporal blocks, interleaved (zip); 2 frames of 8x8, patch 2 -> 16 tokens/frame
LATTE = dict(sample_size=8, num_layers=4, patch_size=2, attention_head_dim=16, num_attention_heads=2,
             caption_channels=32, in_channels=4, cross_attention_dim=32, out_channels=8, attention_bias=True,
             activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
             norm_elementwise_affine=False, norm_eps=1e-6, video_length=2)


def _latte_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            enable_temporal_attentions=True,
        )
    return inputs


# --- Wan-family video inputs: 2 latent frames of 8x8, patch (1, 2, 2) -> 32 tokens
WAN_VIDEO = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                 text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _wan_video_inputs(drift, span, **extra):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            **{k: (v() if callable(v) else v) for k, v in extra.items()},
        )
    return inputs


# --- SkyReels-V2 (Wan-like): 4 blocks; plain text-to-video call (no diffusion forcing, no fps)
SKYREELSV2 = dict(WAN_VIDEO)

# --- Wan VACE: 4 blocks + 2 VACE blocks (hints added after blocks 0 and 2); control latent 8 channels
WANVACE = dict(WAN_VIDEO, vace_layers=[0, 2], vace_in_channels=8)


def _wanvace_inputs(drift, span):
    return _wan_video_inputs(drift, span, control_hidden_states=lambda: _text((BATCH, 8, 2, 8, 8), seed=3))


# --- Sana-Video: 4 linear-attention blocks; 2 frames of 8x8, patch (1, 2, 2) -> 32 tokens
SANAVIDEO = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                 num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
                 caption_channels=32, mlp_ratio=2.5, dropout=0.0, attention_bias=False, sample_size=8,
                 patch_size=(1, 2, 2), norm_elementwise_affine=False, norm_eps=1e-6,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _sanavideo_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
        )
    return inputs


_entry("mochi", "MochiTransformer3DModel", MOCHI, _mochi_inputs, ["transformer_blocks"], {"transformer_blocks": 0},
       drift=1.0, t_span=2.0,
       measured=(0.137, 0.137, 0.136, 0.133, 0.127, 0.12, 0.111, 0.102, 0.092), timestep_decreasing=False,
       coverage_only=True,
       notes="inverted timesteps (1000 * (1 - sigma), INCREASING); fullgraph=True compiles, but without fullgraph "
             "dynamo splits the forward into 11 graphs at aten.nonzero (MochiAttnProcessor selects each sample's "
             "valid prompt tokens from encoder_attention_mask), so the pass finds no loop; pos_frequencies are "
             "zero-initialised (identity RoPE until trained)")
_entry("latte", "LatteTransformer3DModel", LATTE, _latte_inputs,
       ["transformer_blocks", "temporal_transformer_blocks"],
       {"transformer_blocks": 3, "temporal_transformer_blocks": 3}, drift=4.0, t_span=30.0,
       measured=(0.079, 0.085, 0.072, 0.068, 0.058, 0.048, 0.044, 0.036, 0.043),
       output_shape=(BATCH, 8, 2, 8, 8), coverage_only=True,
       notes="spatial and temporal blocks alternate in ONE loop (zip); the temporal block sees a reshaped "
             "(B * tokens, frames, D) stream; out_channels=8: learned sigma, like PixArt")
_entry("skyreelsv2", "SkyReelsV2Transformer3DModel", SKYREELSV2, _wan_video_inputs, ["blocks"], {"blocks": 3},
       drift=2.0, t_span=30.0,
       measured=(0.083, 0.079, 0.068, 0.067, 0.064, 0.063, 0.053, 0.045, 0.047), coverage_only=True,
       notes="plain text-to-video call (enable_diffusion_forcing=False, no fps); cache-dit: Pattern_3")
_entry("wanvace", "WanVACETransformer3DModel", WANVACE, _wanvace_inputs, ["blocks"], {"blocks": 2},
       drift=2.0, t_span=30.0,
       measured=(0.087, 0.077, 0.072, 0.069, 0.062, 0.067, 0.057, 0.043, 0.044), coverage_only=True,
       notes="2 VACE blocks run first over a constant control latent; their hints are added to the stream after "
             "blocks 0 and 2 (between loop iterations)")
_entry("sanavideo", "SanaVideoTransformer3DModel", SANAVIDEO, _sanavideo_inputs, ["transformer_blocks"],
       {"transformer_blocks": 3}, drift=3.0, t_span=300.0,
       measured=(0.082, 0.069, 0.059, 0.052, 0.041, 0.038, 0.031, 0.029, 0.029), coverage_only=True,
       notes="not in cache-dit; Pattern_3 as for Sana (block(h, mask, e, e_mask, t, ...) -> h)")


# --- LTX-2 (audio-video): 4 blocks, each updates video AND audio streams; video 2 frames of 4x4 -> 32 tokens,
#     audio 9 latent frames of 4 channels (patchified: B, tokens, C)
LTX2 = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
            cross_attention_dim=32, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
            audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=4, qk_norm="rms_norm_across_heads",
            caption_channels=32, rope_double_precision=False)


def _ltx2_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        t = _t(step, num_steps, noise_scale, 1000.0, span)
        return dict(
            hidden_states=_latent((BATCH, 32, 4), step, num_steps, noise_scale, drift),
            audio_hidden_states=_latent((BATCH, 9, 4), step, num_steps, noise_scale, drift, seed=4),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            audio_encoder_hidden_states=_text((BATCH, TEXT_LEN, 32), seed=2),
            timestep=t,
            sigma=t,  # the pipeline passes sigma=timestep (LTX-2.3 prompt modulation; unused by LTX-2.0)
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            audio_encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            num_frames=2, height=4, width=4, fps=24.0, audio_num_frames=9,
            use_cross_timestep=True,  # the pipeline's default
        )
    return inputs


_entry("ltx2", "LTX2VideoTransformer3DModel", LTX2, _ltx2_inputs, ["transformer_blocks"], {"transformer_blocks": 0},
       drift=1.5, t_span=10.0,
       measured=(0.076, 0.075, 0.069, 0.063, 0.065, 0.073, 0.079, 0.081, 0.082), coverage_only=True,
       notes="audio-video: blocks return (video, audio); cache-dit treats the audio stream as Pattern_0's "
             "encoder_hidden_states; the model returns (video_sample, audio_sample)")


# --- Motif-Video: 4 dual-stream + 4 single-stream blocks; input = [latents(4) | condition(4) | mask(1)]
#     channels, 2 frames of 8x8, patch 2 -> 32 tokens; predicts the 4 latent channels
MOTIFVIDEO = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                  num_single_layers=4, num_decoder_layers=0, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                  qk_norm="rms_norm", norm_type="layer_norm", text_embed_dim=32, rope_theta=256.0,
                  rope_axes_dim=(4, 6, 6))


def _motifvideo_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift)
        # text-to-video: zero image condition and zero mask, concatenated like the pipeline does
        return dict(
            hidden_states=torch.cat([latents, torch.zeros(BATCH, 5, 2, 8, 8)], dim=1),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
        )
    return inputs


_entry("motifvideo", "MotifVideoTransformer3DModel", MOTIFVIDEO, _motifvideo_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 0, "single_transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.137, 0.142, 0.135, 0.132, 0.119, 0.103, 0.104, 0.107, 0.116),
       output_shape=(BATCH, 4, 2, 8, 8), coverage_only=True,
       notes="hidden_states carries 9 channels (latents | image condition | mask, as the pipeline concatenates); "
             "the sample has the 4 latent channels; single blocks also return (hidden, encoder) (Pattern_0)")


# --- Wan-Animate: 4 Wan blocks + 2 face-adapter cross-attentions (after blocks 0 and 2); input =
#     [latents(4) | reference/condition latents(8)] channels, 3 latent frames of 8x8, patch (1, 2, 2) -> 48 tokens;
#     pose latents for frames 1..2; 5 face frames of 16x16 -> 2 motion frames (+1 pad) = 3, dividing the tokens
WANANIMATE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=12, latent_channels=4,
                  out_channels=4, text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", image_dim=32, rope_max_seq_len=32,
                  motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16,
                  motion_style_dim=8, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
                  face_encoder_num_heads=2, inject_face_latents_blocks=2)


def _wananimate_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 4, 3, 8, 8), step, num_steps, noise_scale, drift)
        return dict(
            hidden_states=torch.cat([latents, _text((BATCH, 8, 3, 8, 8), seed=3)], dim=1),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_hidden_states_image=_text((BATCH, 4, 32), seed=2),
            pose_hidden_states=_text((BATCH, 4, 2, 8, 8), seed=4),
            face_pixel_values=_text((BATCH, 3, 5, 16, 16), seed=5),
        )
    return inputs


_entry("wananimate", "WanAnimateTransformer3DModel", WANANIMATE, _wananimate_inputs, ["blocks"], {"blocks": 2},
       drift=3.0, t_span=50.0,
       measured=(0.081, 0.084, 0.067, 0.075, 0.061, 0.061, 0.058, 0.058, 0.066),
       output_shape=(BATCH, 4, 3, 8, 8), coverage_only=True,
       notes="hidden_states = latents | 8 constant condition channels; constant pose latents, face video and CLIP "
             "image tokens; a face-adapter cross-attention is added after every 2nd block (between loop iterations)")


# --- Kandinsky 6 (video + audio): 1 text block per modality (refiners) + 4 fused video/audio blocks;
#     channels-last video (B, T, H, W, [latent(4) | zero condition(4) | zero mask(1)]), 2 frames of 8x8,
#     patch (1, 2, 2) -> 32 tokens; 8 audio latent frames of 4 channels
KANDINSKY6 = dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, patch_size=(1, 2, 2),
                  model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=4, axes_dims=(4, 6, 6),
                  visual_cond=True, in_audio_dim=4, out_audio_dim=4, text_token_padding=True, ca_rope=True,
                  cross_gates=True, fix_modulation=True)


def _kandinsky6_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 2, 8, 8, 4), step, num_steps, noise_scale, drift)
        return dict(
            hidden_states=torch.cat([latents, torch.zeros(BATCH, 2, 8, 8, 5)], dim=-1),  # the pipeline's layout
            audio_hidden_states=_latent((BATCH, 8, 4), step, num_steps, noise_scale, drift, seed=4),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            pooled_projections=_text((BATCH, 16), seed=2),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN, dtype=torch.bool),
        )
    return inputs


# --- Kandinsky 6 SR: 4 text-free blocks with NABLA sparse attention (flex BlockMask); channels-last
#     (B, T, H, W, [latent(4) | anchor(4) | mask(1)]), 1 frame of 8x8, patch 1 -> 64 tokens (one 8x8 NABLA tile)
KANDINSKY6SR = dict(in_visual_dim=4, out_visual_dim=4, time_dim=32, patch_size=(1, 1, 1), model_dim=32, ff_dim=64,
                    num_visual_blocks=4, axes_dims=(4, 6, 6), nabla_window=(3, 3, 3))


def _kandinsky6sr_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 1, 8, 8, 4), step, num_steps, noise_scale, drift)
        anchor = _text((BATCH, 1, 8, 8, 4), seed=3)
        return dict(
            hidden_states=torch.cat([latents, anchor, torch.ones(BATCH, 1, 8, 8, 1)], dim=-1),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
        )
    return inputs


_entry("kandinsky6", "Kandinsky6Transformer3DModel", KANDINSKY6, _kandinsky6_inputs, ["visual_transformer_blocks"],
       {"visual_transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.076, 0.074, 0.081, 0.079, 0.073, 0.072, 0.067, 0.064, 0.057), output_shape=(BATCH, 2, 8, 8, 4),
       coverage_only=True,
       notes="fused video/audio blocks block(vis, aud, text_v, text_a, (t_v, t_a), ...) -> (vis, aud): audio as "
             "Pattern_0's encoder stream; 1 text block per modality runs before the loop; channels-last layout, "
             "9 input channels, the sample has 4; the model also returns the audio sample")
_entry("kandinsky6sr", "Kandinsky6SRTransformer3DModel", KANDINSKY6SR, _kandinsky6sr_inputs,
       ["visual_transformer_blocks"], {"visual_transformer_blocks": 3}, drift=1.0, t_span=10.0,
       measured=(0.146, 0.132, 0.126, 0.13, 0.133, 0.142, 0.151, 0.129, 0.12),
       output_shape=(BATCH, 1, 8, 8, 4), coverage_only=True,
       notes="text-free; self-attention is NABLA sparse attention on the flex backend (a BlockMask built from "
             "query/key statistics in every block); runs eagerly on CPU at this size (warns: uncompiled flex)")


# --- MiniMax-H3 (video + audio): 1 text-token refiner block + 4 blocks over ONE packed sequence of
#     [8 text | 8 audio | 32 video] rows; video: 2 frames of 8x8 latents (4 ch), patch (1, 2, 2), pre-patchified
MINIMAXH3 = dict(num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=4, num_refiner_layers=1,
                 ffn_dim=64, in_channels=4, audio_in_channels=4, patch_size=(1, 2, 2), text_dim=32, freq_dim=32,
                 time_embed_hidden_dim=32, time_embed_dim=32, rope_freq_dim=2)


def _minimaxh3_layout():
    n_text, n_audio, n_video = TEXT_LEN, 8, 32
    seq = n_text + n_audio + n_video
    text_idx = torch.arange(n_text)
    audio_idx = torch.arange(n_text, n_text + n_audio)
    video_idx = torch.arange(n_text + n_audio, seq)
    tags = torch.zeros(seq, dtype=torch.long)  # 0 video, 1 text, 2 audio
    tags[text_idx], tags[audio_idx] = 1, 2
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq, dtype=torch.float32)
    grid = torch.cartesian_prod(torch.arange(2), torch.arange(4), torch.arange(4)).float()  # (t, h, w) of video rows
    pos[video_idx] = grid + torch.tensor([float(n_text + n_audio), 0.0, 0.0])
    return dict(timestep_indices=torch.zeros(seq, dtype=torch.long), token_tags=tags, position_ids=pos,
                video_indices=video_idx, audio_indices=audio_idx, text_indices=text_idx)


def _minimaxh3_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 32, 16), step, num_steps, noise_scale, drift),
            audio_hidden_states=_latent((BATCH, 8, 4), step, num_steps, noise_scale, drift, seed=4),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            # the distinct timesteps of the packed rows (one here: video, audio and text rows share it);
            # 1 - sigma in [0, 1], INCREASING with the step (the MiniMax-H3 scheduler's convention)
            timestep=_t(step, num_steps, noise_scale, 0.0, -span, batch=1),
            **_minimaxh3_layout(),
        )
    return inputs


_entry("minimaxh3", "MiniMaxH3Transformer3DModel", MINIMAXH3, _minimaxh3_inputs, ["transformer_blocks"],
       {"transformer_blocks": 3}, drift=1.0, t_span=0.01,
       measured=(0.123, 0.121, 0.118, 0.113, 0.106, 0.098, 0.09, 0.083, 0.076),
       timestep_decreasing=False, coverage_only=True,
       notes="one packed sequence (text | audio | video rows scattered by index tensors) through every block; "
             "timestep holds the DISTINCT noise levels (shape (1,), not per sample) and rows pick theirs via "
             "timestep_indices; 1 - sigma, increasing; returns (video_sample, audio_sample)")


# --- SANA-WM (camera-controlled world model): 4 blocks (3 gated-delta-net linear-attention + 1 softmax, every
#     4th), UCPE camera attention + chunk-Plucker post-attention in every block; LTX-2 latents (VAE stride
#     (8, 32, 32)): 2 latent frames of 8x8, patch 1 -> 128 tokens; camera = 9 pixel frames moving forward
SANAWM = dict(in_channels=4, num_layers=4, hidden_size=32, num_attention_heads=2, patch_size=(1, 1, 1),
              softmax_every_n=4, linear_head_dim=16, caption_channels=32, chunk_plucker_channels=48,
              chunk_plucker_post_attn_blocks=4, image_size=256, mixed_precision="fp32")


def _sanawm_camera(num_latent_frames: int = 2, latent_hw: int = 8) -> dict:
    """Deterministic camera tensors built exactly like SanaWMPipeline._build_camera_kwargs: identity rotation,
    the camera moving forward along z, pinhole intrinsics of a (32 * latent_hw)^2 frame."""
    import numpy as np
    from diffusers.pipelines.sana_wm.cam_utils import prepare_camera

    n = (num_latent_frames - 1) * 8 + 1
    poses = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    poses[:, 2, 3] = np.linspace(0.0, 0.5, n, dtype=np.float32)
    side = 32.0 * latent_hw
    intr = np.tile(np.array([[side, side, side / 2, side / 2]], dtype=np.float32), (n, 1))
    cam = prepare_camera(poses, intr, target_size=(int(side), int(side)), vae_stride=(8, 32, 32))
    return dict(camera_conditions=cam["raymap"].unsqueeze(0).expand(BATCH, -1, -1).contiguous(),
                chunk_plucker=cam["chunk_plucker"].unsqueeze(0).expand(BATCH, -1, -1, -1, -1).contiguous())


def _sanawm_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        t = _t(step, num_steps, noise_scale, 1000.0, span)
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),
            timestep=t[:, None, None].expand(BATCH, 1, 2).contiguous(),  # (B, 1, T) per-frame timesteps
            encoder_hidden_states=_text((BATCH, 1, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            **_sanawm_camera(),
        )
    return inputs


_entry("sanawm", "SanaWMTransformer3DModel", SANAWM, _sanawm_inputs, ["blocks"], {"blocks": 3},
       drift=2.5, t_span=20.0,
       measured=(0.058, 0.056, 0.049, 0.042, 0.034, 0.028, 0.024, 0.02, 0.016), coverage_only=True,
       notes="block args are (x, y, t0, mask, THW, rope, ...) -> x; constant camera trajectory (raymap + "
             "chunk Plucker, built with the pipeline's prepare_camera); timestep is (B, 1, T) per frame and "
             "truncated to integers (.long()) inside; the pipeline pins frame 0 (image anchor) to t=0, not done here "
             "so that timestep[0] moves; plucker_embedder and the k-convs are zero-initialised (camera Plucker path "
             "inert at random init); 3 GDN linear-attention blocks + 1 softmax block")


# --- SANA-WM stage-2 refiner (LTX-2 architecture, video stream only): 4 blocks; 2 latent frames of 4x4 -> 32
#     tokens (pre-patchified); run without a KV cache (kv_cache_mode=None: plain full self-attention)
SANAWMREFINER = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
                     attention_head_dim=16, cross_attention_dim=32, audio_in_channels=4, audio_out_channels=4,
                     audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
                     num_layers=4, qk_norm="rms_norm_across_heads", caption_channels=32, rope_double_precision=False)


def _sanawmrefiner_rope(batch: int = BATCH):
    """The pipeline's video RoPE (model.build_rotary_emb_for_absolute_positions), computed from the model's own
    parameter-free rope module; frames 0..1 of a 4x4 latent at 24 fps."""
    from types import SimpleNamespace

    import diffusers

    cls = diffusers.SanaWMLTX2RefinerTransformer3DModel
    rope_model = _SANAWMREFINER_ROPE.get("m")
    if rope_model is None:
        with torch.random.fork_rng():  # building the model draws random weights: keep the global RNG as it was
            rope_model = _SANAWMREFINER_ROPE["m"] = SimpleNamespace(rope=cls(**SANAWMREFINER).rope)
    return cls.build_rotary_emb_for_absolute_positions(rope_model, batch, [0, 1], 4, 4, torch.device("cpu"), 24.0)


_SANAWMREFINER_ROPE: dict = {}


def _sanawmrefiner_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        t = _t(step, num_steps, noise_scale, 1000.0, span)
        return dict(
            hidden_states=_latent((BATCH, 32, 4), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=t[:, None].expand(BATCH, 32).contiguous(),  # (B, tokens): sigma * 1000 per token
            video_rotary_emb=_sanawmrefiner_rope(),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
        )
    return inputs


_entry("sanawmrefiner", "SanaWMLTX2RefinerTransformer3DModel", SANAWMREFINER, _sanawmrefiner_inputs,
       ["transformer_blocks"], {"transformer_blocks": 2}, drift=2.0, t_span=20.0,
       measured=(0.073, 0.064, 0.064, 0.06, 0.051, 0.042, 0.045, 0.054, 0.048), coverage_only=True,
       notes="LTX-2 weights, video-only forward; the pipeline runs it with a sliding-window KV cache "
             "(kv_cache_mode='inject': attention sink + refined history), here kv_cache=None (full self-attention "
             "over the current block); video_rotary_emb is a caller-supplied (cos, sin) input")


# --- MiniMax Music 3 (1-D audio latents): 4 blocks over [time token | 32 latent frames]; frame-aligned conditioning
MINIMAXMUSIC3 = dict(in_channels=8, condition_dim=32, num_layers=4, num_attention_heads=2, attention_head_dim=16,
                     ff_inner_dim=64, rotary_dim=4, fourier_embedding_dim=16)


def _minimaxmusic3_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 8, 32), step, num_steps, noise_scale, drift),  # B, C, L
            timestep=_t(step, num_steps, noise_scale, 0.0, -span),  # flow time 0 (noise) -> 1 (data): INCREASES
            encoder_hidden_states=_text((BATCH, 32, 32)),  # (B, L, condition_dim), aligned to the latent frames
        )
    return inputs


_entry("minimaxmusic3", "MiniMaxMusic3Transformer1DModel", MINIMAXMUSIC3, _minimaxmusic3_inputs,
       ["transformer_blocks"], {"transformer_blocks": 3}, drift=1.5, t_span=0.1,
       measured=(0.076, 0.075, 0.074, 0.072, 0.07, 0.067, 0.064, 0.061, 0.057), timestep_decreasing=False,
       coverage_only=True,
       notes="1-D audio latents (B, C, L); the timestep embedding is prepended as a token, blocks are plain "
             "pre-norm (no modulation); conditioning is frame-aligned and concatenated on channels before proj_in")
