"""Issue 24's fault mindset, on a real FluxPipeline (tiny components, no downloads): what a user
does between and around generations. Each cached generation must equal a fresh cached
pipeline's run of it alone (threshold 1.0: every step after warmup caches, so a state that
crossed a boundary would show)."""

import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline

import dit_cachepass as dcp
from test_state_pipelines import pipe_for, prompt, records, t2i, tiny_flux


def fresh_t2i(seed, steps, dtype=torch.float32):
    pipe = pipe_for(FluxPipeline, tiny_flux().to(dtype), max_warmup_steps=0)
    return t2i(pipe, seed, steps), records(pipe.transformer)


def test_inference_mode_caches_like_no_grad():
    pipe = pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0)
    with torch.inference_mode():
        out = t2i(pipe, 1, 3)
    want, recs = fresh_t2i(1, 3)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert records(pipe.transformer) == recs and dcp.summary(pipe.transformer).cached_steps


def _stop_at_step_1(p, i, t, kw):
    p._interrupt = i == 1 or p._interrupt  # diffusers' documented way to stop early
    return kw


def _raise_at_step_1(p, i, t, kw):
    if i == 1:
        raise KeyboardInterrupt("user pressed Ctrl-C (simulated)")
    return kw


@pytest.mark.parametrize("callback", [_stop_at_step_1, _raise_at_step_1], ids=["interrupt", "raise"])
def test_a_generation_stopped_midway_leaves_nothing_for_the_next(callback):
    """A step callback stops the generation at step 1 (``pipe._interrupt``) or raises (Ctrl-C)."""
    pipe = pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0)
    try:
        pipe(**prompt(5), true_cfg_scale=2.0, height=32, width=32, num_inference_steps=4, guidance_scale=1.0,
             output_type="latent", generator=torch.Generator().manual_seed(5), callback_on_step_end=callback)
    except KeyboardInterrupt:
        assert callback is _raise_at_step_1
    out = t2i(pipe, 1, 3)
    want, recs = fresh_t2i(1, 3)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert records(pipe.transformer) == recs


def test_from_pipe_shares_the_cached_transformer_and_its_generations_stay_apart():
    pipe = pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0)
    t2i(pipe, 1, 3)
    i2i = FluxImg2ImgPipeline.from_pipe(pipe)
    assert i2i.transformer is pipe.transformer
    image = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(9))
    kw = dict(**prompt(2), true_cfg_scale=2.0, image=image, strength=0.75, height=32, width=32,
              num_inference_steps=4, guidance_scale=1.0, output_type="latent")
    out = i2i(**kw, generator=torch.Generator().manual_seed(2)).images
    fresh = FluxImg2ImgPipeline.from_pipe(pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0))
    want = fresh(**kw, generator=torch.Generator().manual_seed(2)).images
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert records(i2i.transformer) == records(fresh.transformer)


def test_pipe_to_another_dtype_between_generations():
    """``pipe.to(torch.float64)`` after a float32 generation: the next one runs in float64 and
    equals a float64 pipeline cached from the start (no float32 residual is reused)."""
    pipe = pipe_for(FluxPipeline, tiny_flux(), max_warmup_steps=0)
    t2i(pipe, 1, 3)
    pipe.to(torch.float64)
    kw = {k: v.double() for k, v in prompt(2).items()}
    run = lambda p: p(**kw, true_cfg_scale=2.0, height=32, width=32, num_inference_steps=3,  # noqa: E731
                      guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(2)).images
    out = run(pipe)
    fresh = pipe_for(FluxPipeline, tiny_flux().double(), max_warmup_steps=0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, run(fresh), rtol=0, atol=0)
    assert records(pipe.transformer) == records(fresh.transformer)
