"""Issue 12 with real diffusers pipelines (tiny components, no downloads): generation
boundaries come from the pipeline call, branches from its ``cache_context`` names, and
every generation equals a fresh model's run of it alone."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline, FluxTransformer2DModel

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=1, residual_diff_threshold=1.0)


def tiny_flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)).eval()


def pipe_for(cls, transformer, cached=True, **cfg):
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
               text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    if cached:
        dcp.enable_cache(pipe, dcp.DBCacheConfig(**{**CFG, **cfg}), backend="eager")
    return pipe


def prompt(seed):
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
                negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))


def t2i(pipe, seed, steps):
    return pipe(**prompt(seed), true_cfg_scale=2.0, height=32, width=32, num_inference_steps=steps,
                guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(seed)).images


def records(m):
    return {l.name: [(r.step, r.cached, r.reason) for r in l.steps] for l in dcp.summary(m).loops}


def test_true_cfg_pipeline_generations_equal_a_fresh_model_each():
    """FluxPipeline with true CFG: cond and uncond calls under cache_context. Generations of
    several and of one step (distilled-style, same timestep every time), different prompts."""
    pipe = pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0)
    for seed, steps in [(1, 3), (2, 1), (3, 1), (4, 1)]:
        out = t2i(pipe, seed, steps)
        fresh = pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0)
        torch.testing.assert_close(out, t2i(fresh, seed, steps), rtol=0, atol=0)
        assert records(pipe.transformer) == records(fresh.transformer)
        if steps == 3:
            loops = dcp.summary(pipe.transformer).loops
            assert len(loops) == 2 and loops[1].name.endswith("[uncond]")
            assert loops[0].cached_steps == [1, 2] and loops[1].cached_steps == [1, 2]
    assert type(pipe).__name__ == "FluxPipeline" and isinstance(pipe, FluxPipeline)
    dcp.disable_cache(pipe)
    assert type(pipe) is FluxPipeline


def test_img2img_after_text_to_image_on_the_same_transformer():
    """The img2img run starts below the text-to-image run's last timestep: no timestep jump
    shows it, the pipeline call does."""
    transformer = tiny_flux()
    pipe = pipe_for(FluxPipeline, transformer)
    last = t2i(pipe, 1, 3)
    t_last = float(pipe.scheduler.timesteps[-1])
    img = pipe_for(FluxImg2ImgPipeline, transformer)  # same transformer: its session is kept
    assert img.transformer._dit_cachepass is pipe.transformer._dit_cachepass
    image = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(9))

    def i2i(p):
        return p(**prompt(2), image=image, strength=0.2, height=32, width=32, num_inference_steps=20,
                 guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(2)).images

    out = i2i(img)
    assert float(img.scheduler.timesteps[img.scheduler.begin_index]) < t_last
    fresh = pipe_for(FluxImg2ImgPipeline, tiny_flux())
    torch.testing.assert_close(out, i2i(fresh), rtol=0, atol=0)
    ours, theirs = records(transformer), records(fresh.transformer)
    assert {k: ours[k] for k in theirs} == theirs  # (the t2i run's uncond state is not in this run)
    assert dcp.summary(transformer).cached_steps
    del last


def test_lumina2_second_prompt_never_reuses_the_first():
    """Lumina2's cached graph has no timestep input (graph breaks before the loop);
    dcp.compile reads the timestep argument of the call instead."""
    e = ZOO["lumina2"]
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, max_warmup_steps=1, residual_diff_threshold=1.0)

    def gen(m, text_seed):
        outs = []
        with torch.no_grad():
            for s in range(4):
                x = e.inputs(s, 4, 1.0)
                x["encoder_hidden_states"] = torch.randn(x["encoder_hidden_states"].shape,
                                                         generator=torch.Generator().manual_seed(text_seed))
                outs.append(m(**x, return_dict=False)[0])
        return outs

    m = dcp.compile(e.build(), cfg, backend="eager")
    gen(m, 1)
    assert dcp.summary(m).cached_steps
    second = gen(m, 2)
    fresh = dcp.compile(e.build(), cfg, backend="eager")
    for a, b in zip(second, gen(fresh, 2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert dcp.summary(m).loops[0].generations == 2
