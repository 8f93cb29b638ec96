"""Coverage-matrix zoo entries (see zoo.py for the conventions): tiny real diffusers classes."""

from __future__ import annotations

import torch

from ._base import BATCH, TEXT_LEN, _entry, _latent, _t, _text  # noqa: F401
from ._base import _flux_img_ids as _flux_ids


# --- Bria 3.2: Flux-like, 4 double + 4 single blocks; 8x8 packed latent -> 64 tokens
BRIA = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=None, axes_dims_rope=(4, 6, 6))


def _bria_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # the pipeline passes raw t (0..1000)
            img_ids=_flux_ids(8, 8),
            txt_ids=torch.zeros(TEXT_LEN, 3),
        )
    return inputs


_entry("bria", "BriaTransformer2DModel", BRIA, _bria_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 1}, drift=1.0, t_span=10.0,
       measured=(0.144, 0.151, 0.135, 0.112, 0.113, 0.118, 0.102, 0.081, 0.086), coverage_only=True,
       notes="both block kinds return (encoder_hidden_states, hidden_states) = P1; cache-dit 1.5.3's Bria adapter "
             "declares Pattern_0 for both lists, which does not match the blocks' return order")


# --- Bria FIBO: 4 double + 4 single blocks, each fed its own projected text-encoder layer; 64 tokens
BRIAFIBO = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, text_encoder_dim=32, pooled_projection_dim=None,
                axes_dims_rope=(4, 6, 6))


def _briafibo_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            # one text-encoder hidden layer per block (4 double + 4 single)
            text_encoder_layers=[_text((BATCH, TEXT_LEN, 32), seed=10 + i) for i in range(8)],
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # the pipeline passes raw t (0..1000)
            img_ids=_flux_ids(8, 8),
            txt_ids=torch.zeros(TEXT_LEN, 3),
        )
    return inputs


_entry("briafibo", "BriaFiboTransformer2DModel", BRIAFIBO, _briafibo_inputs,
       ["transformer_blocks", "single_transformer_blocks"],
       {"transformer_blocks": 1, "single_transformer_blocks": 3}, drift=1.0, t_span=10.0,
       measured=(0.143, 0.150, 0.134, 0.112, 0.113, 0.118, 0.102, 0.081, 0.085), coverage_only=True,
       notes="extra input text_encoder_layers (8 tensors, one per block): the loop rebuilds encoder_hidden_states "
             "before every block; single blocks are block(h)->h on the concatenated [text, image] stream (P3) "
             "in diffusers' forward, cache-dit 1.5.3 patches them (BriaFiboPatchFunctor) and declares P1 for both")


# --- Bria FIBO 2: Z-Image-style single stream; 1 noise refiner, 4 layers (layer 2 also cross-attends
# to its text bundle), a 1-layer Perceiver squeezing the text into 8 gist tokens; 16x16 latent, patch 2
# -> 64 image tokens (+ 8 gist tokens in the stream)
BRIAFIBO2 = dict(in_channels=4, patch_size=2, dim=32, n_layers=4, n_refiner_layers=1, n_heads=2, cap_feat_dim=32,
                 injection_layer_ids=(2,), perceiver_num_layers=1, min_num_gist_tokens=8, max_num_gist_tokens=8,
                 gist_step=8, gist_min_text_len=4, gist_max_text_len=16, axes_dims=(4, 6, 6),
                 axes_lens=(16, 16, 16))


def _briafibo2_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # the pipeline passes t/1000 (x t_scale inside)
            # (B, 1 + len(injection_layer_ids), text_len, cap_feat_dim): the Perceiver's bundle, then layer 2's
            encoder_hidden_states=_text((BATCH, 2, TEXT_LEN, 32)),
        )
    return inputs


_entry("briafibo2", "BriaFibo2Transformer2DModel", BRIAFIBO2, _briafibo2_inputs, ["layers"], {"layers": 3},
       drift=0.7, t_span=0.007, perturb_zero_init=True, coverage_only=True, graph_breaks=True,
       measured=(0.126, 0.145, 0.158, 0.144, 0.113, 0.092, 0.102, 0.125, 0.133),
       notes="encoder_hidden_states is 4-D (B, 1 + injections, text_len, dim); the stream carries 8 gist tokens "
             "before the 64 image tokens; perturb_zero_init only for the zero-init cross_attn_gate of injection "
             "layer 2 (else its text bundle is ignored); noise_refiner (1 block) and perceiver.layers run every "
             "step; graph break on the first call: RopeEmbedder lazily builds freqs_cis under "
             "`with torch.device('cpu')` (unsupported context manager, transformer_bria_fibo2.py ~150/166)")


# --- CogView3-Plus: 4 blocks; 16x16 latent, patch 2 -> 64 tokens; SDXL-like size conditions
COGVIEW3PLUS = dict(patch_size=2, in_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2,
                    out_channels=4, text_embed_dim=32, time_embed_dim=16, condition_dim=8, pos_embed_max_size=16,
                    sample_size=16)


def _cogview3plus_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 999.0, span),  # raw scheduler timesteps (0..999)
            original_size=torch.tensor([[128.0, 128.0]] * BATCH),
            target_size=torch.tensor([[128.0, 128.0]] * BATCH),
            crop_coords=torch.tensor([[0.0, 0.0]] * BATCH),
        )
    return inputs


_entry("cogview3plus", "CogView3PlusTransformer2DModel", COGVIEW3PLUS, _cogview3plus_inputs,
       ["transformer_blocks"], {"transformer_blocks": 0}, drift=1.0, t_span=10.0, coverage_only=True,
       measured=(0.071, 0.075, 0.073, 0.076, 0.067, 0.056, 0.072, 0.107, 0.099))


# --- DiT (class-conditional): 4 blocks; 16x16 latent, patch 2 -> 64 tokens; predicts learned sigma
DIT = dict(in_channels=4, out_channels=8, activation_fn="gelu-approximate", num_attention_heads=2,
           attention_head_dim=16, attention_bias=True, num_layers=4, norm_type="ada_norm_zero",
           num_embeds_ada_norm=8, patch_size=2, sample_size=16)


def _dit_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 999.0, span),  # raw scheduler timesteps (0..999)
            class_labels=torch.tensor([1, 8])[:BATCH],  # a class and the null (CFG) class, 8 = num_embeds_ada_norm
        )
    return inputs


_entry("dit", "DiTTransformer2DModel", DIT, _dit_inputs, ["transformer_blocks"], {"transformer_blocks": 3},
       drift=1.0, t_span=10.0, output_shape=(BATCH, 8, 16, 16), coverage_only=True,
       measured=(0.048, 0.045, 0.047, 0.043, 0.038, 0.038, 0.037, 0.041, 0.051),
       notes="class-conditional (class_labels, no text); out_channels=8: the sample carries learned sigma")


# --- DreamLite: the continuous-input Transformer2DModel of the DreamLite U-Net (self-attn with GQA +
# qk-norm, cross-attn to text, FFN; layer_norm blocks); an 8x8 feature map of 32 channels -> 64 tokens
DREAMLITE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=4, norm_num_groups=8,
                 cross_attention_dim=32, use_linear_projection=True, qk_norm="rms_norm", ff_mult=2)


def _dreamlite_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 32, 8, 8), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            # accepted but unused by layer_norm blocks (the U-Net does not pass it): kept for the zoo's contract
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),
        )
    return inputs


_entry("dreamlite", "DreamLiteTransformer2DModel", DREAMLITE, _dreamlite_inputs, ["transformer_blocks"],
       {"transformer_blocks": 3}, drift=1.0, t_span=10.0, coverage_only=True,
       measured=(0.089, 0.087, 0.084, 0.079, 0.073, 0.067, 0.061, 0.055, 0.050),
       notes="a U-Net sub-module (4-D feature map in, residual added back out); layer_norm blocks ignore "
             "timestep (the U-Net passes none), so only hidden_states moves; num_kv_heads (GQA) left unset: GQA + "
             "qk_norm needs the U-Net's DreamLite attention processor, the default one fails on the K norm")


# --- ERNIE-Image: single stream [image; text] laid out sequence-first (S, B, H), one shared adaLN
# modulation for all 4 layers; 8x8 latent, patch 1 -> 64 image + 8 text tokens
ERNIEIMAGE = dict(hidden_size=32, num_attention_heads=2, num_layers=4, ffn_hidden_size=64, in_channels=16,
                  out_channels=16, patch_size=1, text_in_dim=16, rope_theta=256, rope_axes_dim=(8, 4, 4), eps=1e-6,
                  qk_layernorm=True)


def _ernieimage_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 16, 8, 8), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 1000.0, span),  # the pipeline passes raw t (0..1000)
            text_bth=_text((BATCH, TEXT_LEN, 16)),
            text_lens=torch.full((BATCH,), TEXT_LEN, dtype=torch.long),
        )
    return inputs


_entry("ernieimage", "ErnieImageTransformer2DModel", ERNIEIMAGE, _ernieimage_inputs, ["layers"], {"layers": 3},
       drift=1.0, t_span=10.0, perturb_zero_init=True, coverage_only=True,
       measured=(0.124, 0.133, 0.124, 0.119, 0.125, 0.113, 0.109, 0.130, 0.136),
       notes="text input is text_bth + text_lens (no encoder_hidden_states); the stream is SEQUENCE-first "
             "(S, B, H); adaLN_modulation and final_linear are zero-initialised (perturb_zero_init); cache-dit 1.5.3 "
             "wraps the forward with ErnieImagePatchFunctor")


# --- FLUX.3: per-mode blocks (4 text-only, 4 image-only, + 4 unused reference-image blocks), then 4 joint
# single blocks over [text; image]; 8x8 packed latent -> 64 tokens, 4-axis (t, h, w, l) RoPE ids
FLUX3 = dict(in_channels=16, cond_in_channels=16, num_layers=4, num_single_layers=4, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=32, timestep_channels=32, mlp_ratio=3.0,
             axes_dims_rope=(4, 4, 4, 4))


def _flux3_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(8), torch.arange(8), torch.arange(1))
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(TEXT_LEN))
        return dict(
            hidden_states=_latent((BATCH, 64, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            timestep=_t(step, num_steps, noise_scale, 1.0, span),  # flow time in [0, 1] (x1000 inside)
            img_ids=img_ids,
            txt_ids=txt_ids,
        )
    return inputs


_entry("flux3", "Flux3Transformer2DModel", FLUX3, _flux3_inputs, ["single_transformer_blocks", "txt_mode_blocks"],
       {"single_transformer_blocks": 1, "txt_mode_blocks": 3}, drift=0.7, t_span=0.003, coverage_only=True,
       measured=(0.120, 0.124, 0.126, 0.124, 0.122, 0.117, 0.112, 0.112, 0.114),
       notes="three main loops in order: txt_mode_blocks (text only, at timestep 0: its inputs never change), "
             "mode_blocks['image'] (P3; a ModuleList inside a ModuleDict, so not nameable in block_lists; "
             "explain calls it mode_blocks.image), single_transformer_blocks (P1 by its return order; measured "
             "is for this list); mode_blocks['image_cond'] only runs with reference images (not passed); no "
             "pipeline in diffusers 0.42.1, timestep is flow time in [0, 1] per the docstring")


# --- GLM-Image: CogView-style dual-stream blocks, plus per-image-token prior (VQ) token embeddings;
# 16x16 latent, patch 2 -> 64 tokens
GLMIMAGE = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=16,
                num_attention_heads=2, text_embed_dim=32, time_embed_dim=16, condition_dim=8,
                prior_vq_quantizer_codebook_size=64)


def _glmimage_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        prior = torch.randint(0, 64, (BATCH, 64), generator=torch.Generator().manual_seed(3))
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            prior_token_id=prior,  # one AR-prior VQ token per image token
            prior_token_drop=torch.zeros(BATCH, 64, dtype=torch.bool),  # the conditional branch keeps them
            timestep=_t(step, num_steps, noise_scale, 999.0, span),  # the pipeline passes t - 1 (0..999)
            target_size=torch.tensor([[128.0, 128.0]] * BATCH),
            crop_coords=torch.tensor([[0.0, 0.0]] * BATCH),
        )
    return inputs


_entry("glmimage", "GlmImageTransformer2DModel", GLMIMAGE, _glmimage_inputs, ["transformer_blocks"],
       {"transformer_blocks": 0}, drift=1.0, t_span=10.0, coverage_only=True,
       measured=(0.111, 0.110, 0.112, 0.107, 0.087, 0.089, 0.102, 0.098, 0.088),
       notes="extra inputs prior_token_id (B, image tokens) and prior_token_drop; torch.compile(fullgraph=True) "
             "gives one graph, but torch._dynamo.explain (and dcp.explain) split it in 2 at "
             "`prior_embedding[prior_token_drop] *= 0.0` (aten.nonzero, transformer_glm_image.py ~662), before the "
             "loop; kv_caches (image-to-image) not exercised")


# --- HiDream-I1: 4 dual-stream + 4 single-stream MoE blocks (2 routed experts + a shared one); every block
# also reads its own Llama-3 hidden layer; 16x16 latent, patch 2 -> 64 tokens
HIDREAM = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
               num_attention_heads=2, caption_channels=(32, 16), text_emb_dim=32, num_routed_experts=2,
               num_activated_experts=2, axes_dims_rope=(8, 4, 4), max_resolution=(32, 32),
               llama_layers=tuple(range(8)), force_inference_output=True)


def _hidream_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            # NOTE: the forward's argument is `timesteps` (plural); the pipeline passes raw t (0..1000)
            timesteps=_t(step, num_steps, noise_scale, 1000.0, span),
            encoder_hidden_states_t5=_text((BATCH, TEXT_LEN, 32)),
            # (llama layers, B, text_len, dim): one selected Llama-3 layer per block (llama_layers)
            encoder_hidden_states_llama3=_text((8, BATCH, TEXT_LEN, 16), seed=3),
            pooled_embeds=_text((BATCH, 32), seed=2),
        )
    return inputs


def register_hidream() -> None:
    """HiDream's forward names its timestep argument ``timesteps``."""
    _entry("hidream", "HiDreamImageTransformer2DModel", HIDREAM, _hidream_inputs,
           ["double_stream_blocks", "single_stream_blocks"],
           {"double_stream_blocks": 0, "single_stream_blocks": 3}, drift=1.0, t_span=10.0, coverage_only=True,
           measured=(0.128, 0.138, 0.139, 0.124, 0.113, 0.117, 0.107, 0.084, 0.081), graph_breaks=True,
           notes="timestep argument is `timesteps`; MoE FFN (2 routed experts + shared); extra inputs "
                 "encoder_hidden_states_t5, encoder_hidden_states_llama3 (8 layers, B, L, D: one per block), "
                 "pooled_embeds; the loops rebuild the text stream before every block; graph breaks: MoEFeedForward."
                 "moe_infer (bincount().cpu().numpy() then a data-dependent loop, transformer_hidream_image.py "
                 "~389) and Tensor.item() in unpatchify (~696); cache-dit 1.5.3 uses HiDreamPatchFunctor")


# --- Hunyuan-DiT: 4 blocks with U-Net-like long skips (block 0's output feeds block 3); 16x16 latent,
# patch 2 -> 64 tokens; two text encoders (CLIP-like + T5); predicts learned sigma
HUNYUANDIT = dict(sample_size=16, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=16,
                  num_attention_heads=2, cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16,
                  hidden_size=32, text_len=TEXT_LEN, text_len_t5=TEXT_LEN, activation_fn="gelu-approximate")


def _hunyuandit_inputs(drift, span):
    def inputs(step: int, num_steps: int = 10, noise_scale: float = 1.0) -> dict:
        from diffusers.models.embeddings import get_2d_rotary_pos_embed

        # as the pipeline builds it: head_dim, crop region of the 8x8 token grid at base size 8, grid size
        rope = get_2d_rotary_pos_embed(16, ((0, 0), (8, 8)), (8, 8), output_type="pt")
        return dict(
            hidden_states=_latent((BATCH, 4, 16, 16), step, num_steps, noise_scale, drift),
            timestep=_t(step, num_steps, noise_scale, 999.0, span),  # raw scheduler timesteps (0..999)
            encoder_hidden_states=_text((BATCH, TEXT_LEN, 32)),
            text_embedding_mask=torch.ones(BATCH, TEXT_LEN),
            encoder_hidden_states_t5=_text((BATCH, TEXT_LEN, 32), seed=2),
            text_embedding_mask_t5=torch.ones(BATCH, TEXT_LEN),
            # original size, target size, crop top-left
            image_meta_size=torch.tensor([[1024.0, 1024.0, 128.0, 128.0, 0.0, 0.0]] * BATCH),
            style=torch.zeros(BATCH, dtype=torch.long),
            image_rotary_emb=rope,
        )
    return inputs


_entry("hunyuandit", "HunyuanDiT2DModel", HUNYUANDIT, _hunyuandit_inputs, ["blocks"], {"blocks": 3},
       drift=1.0, t_span=10.0, output_shape=(BATCH, 8, 16, 16), coverage_only=True,
       measured=(0.072, 0.071, 0.069, 0.067, 0.063, 0.058, 0.055, 0.052, 0.047),
       notes="long skip connections: block 0's output is popped as `skip` by block 3 (layer > num_layers // 2); "
             "extra inputs: T5 states + masks, image_meta_size, style, image_rotary_emb (built as the pipeline "
             "does); learned sigma (out_channels=8); cache-dit 1.5.3 declares Pattern_3 (with "
             "HunyuanDiTPatchFunctor), the block is block(h, encoder_hidden_states=...)->h")


register_hidream()
