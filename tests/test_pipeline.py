"""An unchanged diffusers pipeline call with the compiled transformer."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

import dit_cachepass as dcp


def tiny_flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=3, num_single_layers=3,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)).eval()


def generate(transformer, steps=8):
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, 8, 32, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    out = pipe(prompt_embeds=prompt, pooled_prompt_embeds=pooled, height=32, width=32, num_inference_steps=steps,
               guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(1))
    return pipe, out.images


def test_flux_pipeline_takes_cached_steps_and_stays_close():
    _, ref = generate(tiny_flux())
    pipe, _ = generate(tiny_flux())  # build a pipeline, then swap in the compiled transformer
    pipe.transformer = dcp.compile(pipe.transformer, dcp.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.6, max_warmup_steps=2,
        max_continuous_cached_steps=2), backend="eager")
    assert pipe.transformer.config.num_layers == 3 and pipe.transformer.dtype == torch.float32
    _, out = generate(pipe.transformer)
    s = dcp.summary(pipe.transformer)
    assert s.cached_steps and len(s.loops[0].steps) == 8, str(s)
    assert (out - ref).abs().mean() / ref.abs().mean() < 0.1
    # a second pipeline call is a new generation (timestep jumps back up): warmup again
    _, out2 = generate(pipe.transformer)
    s2 = dcp.summary(pipe.transformer)
    assert s2.loops[0].generations == 2 and s2.cached_steps == s.cached_steps
    torch.testing.assert_close(out2, out)


def test_flux_pipeline_threshold_zero_matches_eager():
    _, ref = generate(tiny_flux(), steps=4)
    m = dcp.compile(tiny_flux(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                   residual_diff_threshold=0.0), backend="eager")
    _, out = generate(m, steps=4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
