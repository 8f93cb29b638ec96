"""Coverage-matrix zoo entries (see zoo.py for the conventions): tiny real diffusers classes."""

from __future__ import annotations

import torch

from ._base import BATCH, TEXT_LEN, _entry, _latent, _t, _text  # noqa: F401


# --- Allegro: 4 blocks; 2 latent frames of 8x8, patch 2 -> 32 video tokens
ALLEGRO = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, num_layers=4,
               cross_attention_dim=32, sample_width=8, sample_height=8, sample_frames=8, caption_channels=32)


def _allegro_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
        )
    return inputs


_entry("allegro", "AllegroTransformer3DModel", ALLEGRO, _allegro_inputs, ["transformer_blocks"],
       {"transformer_blocks": 2}, drift=3.0, t_span=50.0,
       measured=(0.085, 0.074, 0.069, 0.059, 0.052, 0.043, 0.049, 0.052, 0.041), coverage_only=True,
       notes="image_rotary_emb (3D RoPE the pipeline precomputes) left None: plain attention")


# --- AnyFlow (Wan-based flow-map T2V): 4 blocks; 2 frames of 8x8, patch (1, 2, 2) -> 32 tokens
ANYFLOW = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
               text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, cross_attn_norm=True, rope_max_seq_len=32,
               gate_value=0.25, deltatime_type="r")


def _anyflow_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        frames = 2

        def per_frame(s):  # the pipeline passes (B, F) timesteps, raw 0..1000
            return _t(s, num_steps, noise_scale, 1000.0, span)[:, None].repeat(1, frames)
        return dict(
            hidden_states=_latent((BATCH, frames, 4, 8, 8), step, num_steps, noise_scale, drift),  # B, F, C, H, W
            timestep=per_frame(step),
            r_timestep=per_frame(step + 1),  # flow-map target: the next step's timestep
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
        )
    return inputs


_entry("anyflow", "AnyFlowTransformer3DModel", ANYFLOW, _anyflow_inputs, ["blocks"], {"blocks": 2},
       drift=2.0, t_span=50.0, measured=(0.078, 0.078, 0.078, 0.076, 0.057, 0.06, 0.059, 0.049, 0.054),
       coverage_only=True, notes="hidden_states is (B, F, C, H, W); timestep and r_timestep (flow-map target) "
                                 "are per-frame (B, F)")


# --- AnyFlow-FAR (causal chunk-autoregressive AnyFlow): 4 blocks; the pipeline's first chunk (2 frames of 8x8,
# patch (1, 2, 2) -> 32 tokens) denoised against an empty KV cache
ANYFLOWFAR = dict(patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, num_attention_heads=2,
                  attention_head_dim=16, in_channels=4, out_channels=4, text_dim=32, freq_dim=64, ffn_dim=64,
                  num_layers=4, cross_attn_norm=True, rope_max_seq_len=32, gate_value=0.25, deltatime_type="r")


def _anyflowfar_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        frames, heads, head_dim, cfg = 2, 2, 16, ANYFLOWFAR
        full_tokens = cfg["full_chunk_limit"] * frames * (8 // 2) * (8 // 2)
        compressed_tokens = 1 * frames * (8 // 4) * (8 // 4)  # (chunks - full_chunk_limit + 1) * max chunk * tokens

        def per_frame(s):  # the pipeline passes (B, F) timesteps, raw 0..1000
            return _t(s, num_steps, noise_scale, 1000.0, span)[:, None].repeat(1, frames)
        # the pipeline's preallocated per-layer KV cache (all zeros before the first chunk is cached)
        kv_cache = {i: {"full_cache": torch.zeros(2, BATCH, heads, full_tokens, head_dim),
                        "compressed_cache": torch.zeros(2, BATCH, heads, compressed_tokens, head_dim)}
                    for i in range(cfg["num_layers"])}
        return dict(
            hidden_states=_latent((BATCH, frames, 4, 8, 8), step, num_steps, noise_scale, drift),  # B, F, C, H, W
            timestep=per_frame(step),
            r_timestep=per_frame(step + 1),  # flow-map target: the next step's timestep
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            chunk_partition=[frames],
            kv_cache=kv_cache,
            kv_cache_flag={"num_cached_chunks": 0, "is_cache_step": False},
        )
    return inputs


_entry("anyflowfar", "AnyFlowFARTransformer3DModel", ANYFLOWFAR, _anyflowfar_inputs, ["blocks"], {"blocks": 2},
       drift=3.0, t_span=100.0, measured=(0.072, 0.067, 0.064, 0.052, 0.048, 0.034, 0.039, 0.036, 0.037),
       coverage_only=True,
       notes="the pipeline's KV-cache inference path on the first chunk: chunk_partition=[2], an all-zero "
             "preallocated kv_cache (dict layer -> {full_cache, compressed_cache}, read-only here) and "
             "kv_cache_flag; self-attention goes through flex_attention (eager on CPU: unfused, warns); returns "
             "(sample, kv_cache). hidden_states (B, F, C, H, W), per-frame timesteps (B, F)")


# --- ChronoEdit (Wan 2.1 I2V-based image editing): 4 blocks; 2 frames (input + edited) of 8x8, patch (1, 2, 2)
# -> 32 tokens; the pipeline concatenates 4 latent + 4 condition channels and passes CLIP image embeddings
CHRONOEDIT = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4,
                  text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=16, added_kv_proj_dim=32, rope_max_seq_len=64,
                  rope_temporal_skip_len=8)


def _chronoedit_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift)  # B, C, F, H, W
        condition = _text((BATCH, 4, 2, 8, 8), seed=3)  # mask + encoded first frame, constant
        return dict(
            hidden_states=torch.cat([latents, condition], dim=1),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_hidden_states_image=_text((BATCH, 4, 16), seed=2),
        )
    return inputs


_entry("chronoedit", "ChronoEditTransformer3DModel", CHRONOEDIT, _chronoedit_inputs, ["blocks"], {"blocks": 2},
       drift=2.0, t_span=50.0, measured=(0.077, 0.072, 0.074, 0.055, 0.054, 0.068, 0.055, 0.052, 0.037),
       output_shape=(BATCH, 4, 2, 8, 8), coverage_only=True,
       notes="I2V layout: hidden_states = latents (4 ch) + constant condition (4 ch), CLIP image embeddings "
             "(encoder_hidden_states_image) projected to added K/V; 2 frames take ChronoEdit's temporal-skip RoPE")


# --- ConsisID (CogVideoX-I2V + identity-preserving face adapter): 4 blocks, a face perceiver cross-attention after
# every 2nd block (inside the loop); 2 latent frames of 8x8, patch 2 -> 32 video tokens (+8 text tokens)
CONSISID = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
                text_embed_dim=32, num_layers=4, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
                temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
                use_learned_positional_embeddings=False, is_train_face=True, is_kps=False, cross_attn_interval=2,
                cross_attn_dim_head=8, cross_attn_num_heads=2, LFE_id_dim=8, LFE_vit_dim=16, LFE_depth=1,
                LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=2, LFE_output_dim=21,
                LFE_ff_mult=1, LFE_num_scale=1)  # LFE_output_dim = int(inner_dim * 2 / 3)


def _consisid_rope():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    # what ConsisIDPipeline._prepare_rotary_positional_embeddings gives for a 4x4 patch grid (= the base size)
    return get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (4, 4)), grid_size=(4, 4), temporal_size=2)


def _consisid_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 2, 4, 8, 8), step, num_steps, noise_scale, drift)  # B, F, C, H, W
        image_latents = _text((BATCH, 2, 4, 8, 8), seed=3)  # encoded reference image (padded frames), constant
        return dict(
            hidden_states=torch.cat([latents, image_latents], dim=2),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 999.0, span),
            image_rotary_emb=_consisid_rope(),
            id_vit_hidden=[_text((BATCH, 4, 16), seed=4)],  # CLIP-ViT hidden states of the face, one per scale
            id_cond=_text((BATCH, 8), seed=5),  # face (antelope) + CLIP embedding
        )
    return inputs


_entry("consisid", "ConsisIDTransformer3DModel", CONSISID, _consisid_inputs, ["transformer_blocks"],
       {"transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.107, 0.099, 0.098, 0.109, 0.105, 0.104, 0.096, 0.086, 0.105), output_shape=(BATCH, 2, 4, 8, 8),
       coverage_only=True,
       notes="I2V: hidden_states (B, F, C, H, W) = latents (4 ch) + constant image latents (4 ch); face identity "
             "inputs id_cond / id_vit_hidden feed a perceiver cross-attention applied after every 2nd block INSIDE "
             "the block loop (perceiver_cross_attention, a second 2-entry ModuleList); 3D RoPE as the pipeline "
             "computes it")


# --- Cosmos 1.0 (text2world; also the Cosmos 2 backbone): 4 blocks; 2 frames of 8x8, patch (1, 2, 2) -> 32 tokens
COSMOS = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4, mlp_ratio=2,
              text_embed_dim=32, adaln_lora_dim=8, max_size=(4, 32, 32), patch_size=(1, 2, 2),
              rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False,  # True needs torchvision (not installed)
              extra_pos_embed_type="learnable")


def _cosmos_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            # EDM c_noise (0.25 log sigma, about 1.1 at the noisy end) in Cosmos 1; sigma / (sigma + 1) in Cosmos 2
            timestep=_t(step, num_steps, noise_scale, 1.0, span),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            fps=30,
        )
    return inputs


_entry("cosmos", "CosmosTransformer3DModel", COSMOS, _cosmos_inputs, ["transformer_blocks"], {"transformer_blocks": 2},
       drift=1.0, t_span=0.01, measured=(0.101, 0.098, 0.093, 0.087, 0.081, 0.074, 0.067, 0.062, 0.056),
       coverage_only=True,
       notes="concat_padding_mask=False: the resize of the (all-zero) padding mask needs torchvision, which is "
             "not installed (with an all-zero mask this only drops a zero input channel); fps=30 feeds the RoPE")


# --- EasyAnimate V5.1: 4 MMDiT blocks; 2 frames of 8x8, patch 2 -> 32 video tokens
EASYANIMATE = dict(attention_head_dim=16, num_attention_heads=2, in_channels=4, out_channels=4, mmdit_layers=4,
                   num_layers=4, patch_size=2, sample_height=8, sample_width=8, text_embed_dim=32, time_embed_dim=32,
                   time_position_encoding_type="3d_rope", timestep_activation_fn="silu")


def _easyanimate_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
        )
    return inputs


_entry("easyanimate", "EasyAnimateTransformer3DModel", EASYANIMATE, _easyanimate_inputs, ["transformer_blocks"],
       {"transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.117, 0.114, 0.116, 0.12, 0.119, 0.119, 0.116, 0.107, 0.1), coverage_only=True)


# --- Helios (Wan-based chunked long-video): 4 blocks; a 2-frame 8x8 chunk (patch (1, 2, 2) -> 32 tokens) after
# short (2 frames -> 32 tokens), mid (2 -> 4 tokens) and long (4 -> 1 token) history latents, history_sizes [4, 2, 1]
HELIOS = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
              text_dim=32, freq_dim=64, ffn_dim=64, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              rope_dim=(4, 6, 6), has_multi_term_memory_patch=True, guidance_cross_attn=True,
              zero_history_timestep=True, is_amplify_history=False)


def _helios_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        # HeliosPipeline with keep_first_frame: frame indices [prefix | long x4 | mid x2 | 1x | chunk x2]
        idx = torch.arange(10)
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            indices_hidden_states=idx[8:10][None],
            indices_latents_history_short=torch.cat([idx[0:1], idx[7:8]])[None],
            indices_latents_history_mid=idx[5:7][None],
            indices_latents_history_long=idx[1:5][None],
            latents_history_short=_text((BATCH, 4, 2, 8, 8), seed=3),  # already denoised chunks: constant
            latents_history_mid=_text((BATCH, 4, 2, 8, 8), seed=4),
            latents_history_long=_text((BATCH, 4, 4, 8, 8), seed=5),
        )
    return inputs


_entry("helios", "HeliosTransformer3DModel", HELIOS, _helios_inputs, ["blocks"], {"blocks": 2},
       drift=2.0, t_span=50.0, measured=(0.074, 0.067, 0.052, 0.052, 0.049, 0.039, 0.043, 0.05, 0.037),
       coverage_only=True,
       notes="extra inputs: frame indices (1, n) and constant short/mid/long history latents (patchified with "
             "(1,2,2) / (2,4,4) / (4,8,8) kernels and prepended: 37 history + 32 chunk tokens); history tokens get a "
             "t=0 modulation (zero_history_timestep); blocks take original_context_length positionally")


# --- HunyuanVideo 1.5 (T2V): 4 dual-stream blocks (+1 token-refiner block); 1 frame of 8x8, patch 1 -> 64 tokens
HUNYUANVIDEO15 = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                      num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=32,
                      text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(4, 6, 6), target_size=16,
                      task_type="t2v")


def _hunyuanvideo15_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 4, 1, 8, 8), step, num_steps, noise_scale, drift)  # B, C, F, H, W
        # T2V: the pipeline concatenates all-zero condition latents and an all-zero mask channel
        return dict(
            hidden_states=torch.cat([latents, torch.zeros(BATCH, 5, 1, 8, 8)], dim=1),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            encoder_hidden_states_2=_text((BATCH, 4, 16), seed=2),  # ByT5 glyph embeddings
            encoder_attention_mask_2=torch.ones(BATCH, 4),
            image_embeds=torch.zeros(BATCH, 4, 16),  # T2V: zero SigLIP tokens (masked out inside)
        )
    return inputs


_entry("hunyuanvideo15", "HunyuanVideo15Transformer3DModel", HUNYUANVIDEO15, _hunyuanvideo15_inputs,
       ["transformer_blocks"], {"transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.116, 0.116, 0.106, 0.095, 0.098, 0.108, 0.093, 0.073, 0.077), output_shape=(BATCH, 4, 1, 8, 8),
       graph_breaks=True, coverage_only=True,
       notes="T2V layout: hidden_states = latents (4 ch) + zero condition latents (4) + zero mask (1); three "
             "conditioning streams (text, ByT5, zero image embeds) reordered per sample with boolean masks; the "
             "ByT5 projection has a hard-coded 2048 width (4.4M params). Graph break: data-dependent branch "
             "`is_t2v = torch.all(image_embeds == 0)` (transformer_hunyuan_video15.py ~701), then boolean-mask "
             "indexing of the text tokens")


# --- HunyuanVideo FramePack (I2V, vanilla sampling): 4 dual-stream + 4 single-stream blocks; a 2-frame 8x8 section
# (patch 2 -> 32 tokens) after clean (2 frames -> 32 tokens), 2x (2 -> 4) and 4x (4 -> 1) history latents
FRAMEPACK = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
                 num_single_layers=4, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
                 text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(4, 6, 6), image_condition_type=None,
                 has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True)


def _framepack_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        # vanilla sampling, history_sizes [4, 2, 1]: frame indices [prefix | 4x x4 | 2x x2 | 1x | section x2]
        idx = torch.arange(10)
        return dict(
            hidden_states=_latent((BATCH, 4, 2, 8, 8), step, num_steps, noise_scale, drift),  # B, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_attention_mask=torch.ones(BATCH, TEXT_LEN),
            pooled_projections=_text((BATCH, 16), seed=2),
            image_embeds=_text((BATCH, 4, 16), seed=3),  # SigLIP embedding of the start image
            indices_latents=idx[8:10],
            guidance=torch.full((BATCH,), 10000.0),  # distilled guidance: the pipeline passes guidance_scale * 1000
            latents_clean=_text((BATCH, 4, 2, 8, 8), seed=4),  # start-image latent + last 1x history frame
            indices_latents_clean=torch.cat([idx[0:1], idx[7:8]]),
            latents_history_2x=_text((BATCH, 4, 2, 8, 8), seed=5),
            indices_latents_history_2x=idx[5:7],
            latents_history_4x=_text((BATCH, 4, 4, 8, 8), seed=6),
            indices_latents_history_4x=idx[1:5],
        )
    return inputs


_entry("framepack", "HunyuanVideoFramepackTransformer3DModel", FRAMEPACK, _framepack_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 0, "single_transformer_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.114, 0.087, 0.081, 0.093, 0.081, 0.061, 0.07, 0.073, 0.064), coverage_only=True,
       notes="no cache-dit adapter; patterns as HunyuanVideo's (both lists return (h, e)). Extra inputs: 1-D frame "
             "indices, constant clean / 2x / 4x history latents (37 history tokens prepended to the 32 section "
             "tokens, cut off before norm_out), SigLIP image_embeds, guidance. fullgraph=True compiles, but without "
             "fullgraph the per-sample `attention_mask[i, :effective_sequence_length[i]] = True` loop "
             "(transformer_hunyuan_video_framepack.py ~336) breaks the graph on Tensor.item() (explain: 5 graphs, "
             "uncached; with torch._dynamo.config.capture_scalar_outputs=True: 1 graph, both lists cached)")


# --- JoyImage-Edit: 4 double-stream blocks; multi-item input (reference image + edited image), each 1 frame of 8x8,
# patch (1, 2, 2) -> 2 x 16 = 32 image tokens
JOYIMAGE = dict(patch_size=[1, 2, 2], in_channels=8, hidden_size=32, num_attention_heads=2, text_dim=32, num_layers=4,
                rope_dim_list=[4, 6, 6], theta=256)


def _joyimage_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        reference = _text((BATCH, 1, 8, 1, 8, 8), seed=3)  # the pipeline restores it at every step
        noisy = _latent((BATCH, 1, 8, 1, 8, 8), step, num_steps, noise_scale, drift)
        return dict(
            hidden_states=torch.cat([reference, noisy], dim=1),  # B, items, C, F, H, W
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
        )
    return inputs


_entry("joyimage", "JoyImageEditTransformer3DModel", JOYIMAGE, _joyimage_inputs, ["double_blocks"],
       {"double_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.096, 0.093, 0.077, 0.088, 0.096, 0.081, 0.072, 0.087, 0.107), coverage_only=True,
       notes="6-D multi-item hidden_states (B, items, C, F, H, W): a constant reference-image latent + the drifting "
             "target latent; the sample has the same 6-D shape")


# --- JoyImage-Edit-Plus: 4 double-stream blocks; pre-patchified packed input: target (4x4 patch grid) + one reference
# image (4x4), patch (1, 2, 2) -> 32 patch tokens of (C, 1, 2, 2)
JOYIMAGEPLUS = dict(patch_size=[1, 2, 2], in_channels=8, hidden_size=32, num_attention_heads=2, text_dim=32,
                    num_layers=4, rope_dim_list=[4, 6, 6], theta=256)


def _joyimageplus_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        target = _latent((BATCH, 16, 8, 1, 2, 2), step, num_steps, noise_scale, drift)
        reference = _text((BATCH, 16, 8, 1, 2, 2), seed=3)  # restored by the pipeline at every step
        return dict(
            hidden_states=torch.cat([target, reference], dim=1),  # B, patches, C, pt, ph, pw
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            encoder_hidden_states_mask=torch.ones(BATCH, TEXT_LEN),
            shape_list=[[(1, 4, 4), (1, 4, 4)]] * BATCH,  # per sample: (t, h, w) patch grid of each item
        )
    return inputs


_entry("joyimageplus", "JoyImageEditPlusTransformer3DModel", JOYIMAGEPLUS, _joyimageplus_inputs, ["double_blocks"],
       {"double_blocks": 0}, drift=1.0, t_span=10.0,
       measured=(0.101, 0.097, 0.08, 0.092, 0.102, 0.086, 0.076, 0.092, 0.114), coverage_only=True,
       notes="hidden_states are pre-patchified packed patches (B, N, C, pt, ph, pw): target patches (drifting) then "
             "reference-image patches (constant); shape_list (python) gives each item's patch grid for the RoPE; the "
             "text mask builds a boolean attention mask")


# --- Kandinsky 5 (T2V, visual_cond): 1 text-encoder block + 4 visual (decoder) blocks; channels-last latents,
# 2 frames of 8x8, patch (1, 2, 2) -> 32 visual tokens
KANDINSKY5 = dict(in_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=32, out_visual_dim=4, patch_size=(1, 2, 2),
                  model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=4, axes_dims=(4, 6, 6),
                  visual_cond=True, attention_type="regular")


def _kandinsky5_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        latents = _latent((BATCH, 2, 8, 8, 4), step, num_steps, noise_scale, drift)  # B, F, H, W, C
        # T2V with visual_cond: the pipeline appends all-zero condition latents and an all-zero mask channel
        return dict(
            hidden_states=torch.cat([latents, torch.zeros(BATCH, 2, 8, 8, 5)], dim=-1),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),  # Qwen2.5-VL embeddings
            pooled_projections=_text((BATCH, 16), seed=2),  # CLIP pooled embedding
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # raw scheduler timesteps
            visual_rope_pos=[torch.arange(2), torch.arange(4), torch.arange(4)],
            text_rope_pos=torch.arange(TEXT_LEN),
            scale_factor=(1, 2, 2),
            sparse_params=None,  # attention_type="regular"
        )
    return inputs


_entry("kandinsky5", "Kandinsky5Transformer3DModel", KANDINSKY5, _kandinsky5_inputs, ["visual_transformer_blocks"],
       {"visual_transformer_blocks": 3}, drift=1.0, t_span=10.0, perturb_zero_init=True,
       measured=(0.084, 0.08, 0.081, 0.08, 0.073, 0.07, 0.073, 0.066, 0.063), output_shape=(BATCH, 2, 8, 8, 4),
       coverage_only=True,
       notes="forward(return_dict=False) returns the BARE sample tensor (not a tuple); channels-last latents "
             "(B, F, H, W, C) + zero visual_cond channels (2C+1 in, C out); Kandinsky5Modulation zero-inits all "
             "modulation (blocks are identities without perturb_zero_init); rope positions passed as index tensors; "
             "1-block text_transformer_blocks list (text encoder) runs before the visual loop")
