"""cache-dit's drop-in: enable_cache on a pipeline with two transformers, ParamsModifier."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO
from toy_models import ToyDiT, toy_inputs


def test_params_modifier_changes_only_named_fields():
    base = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=2)
    c = dcp.ParamsModifier(residual_diff_threshold=0.1).apply(base)
    assert (c.Fn_compute_blocks, c.Bn_compute_blocks, c.threshold, c.max_warmup_steps) == (1, 1, 0.1, 2)
    assert dcp.ParamsModifier(cache_config=dcp.DBCacheConfig()).apply(base).Fn_compute_blocks == 8
    with pytest.raises(ValueError, match="ParamsModifier got unexpected keyword argument.*'Fn' \\(did you mean 'Fn_compute_blocks'"):
        dcp.ParamsModifier(Fn=3)
    with pytest.raises(ValueError, match="Bn_compute_blocks"):
        dcp.ParamsModifier(Bn_compute_blocks=-1)


def test_per_loop_modifiers_give_each_loop_its_own_split_and_threshold():
    e = ZOO["flux"]
    m = dcp.compile(e.build(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.0,
                                                 max_warmup_steps=1, loop_layout="per_list"),
                    params_modifiers=[dcp.ParamsModifier(), dcp.ParamsModifier(Fn_compute_blocks=2,
                                                                               residual_diff_threshold=0.9)],
                    backend="eager")
    rep = dcp.explain(m, **e.inputs(0, 6, 1.0), return_dict=False)
    assert [len(l.fn_blocks) for l in rep.loops] == [1, 2]
    with torch.no_grad():
        for s in range(6):
            m(**e.inputs(s, 6, 1.0), return_dict=False)
    double, single = dcp.summary(m).loops
    assert double.cached_steps == [] and single.cached_steps  # threshold 0 vs 0.9


class TwoTransformerPipe:
    """Wan2.2-style: two experts; diffusers pipelines expose them via ``components``."""

    def __init__(self):
        torch.manual_seed(0)
        self.transformer, self.transformer_2 = ToyDiT().eval(), ToyDiT().eval()
        self.components = {"transformer": self.transformer, "transformer_2": self.transformer_2, "scheduler": None}


def test_enable_cache_caches_every_transformer_with_independent_state():
    pipe = TwoTransformerPipe()
    dcp.enable_cache(pipe, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5,
                                             max_warmup_steps=1),
                     params_modifiers=[None, dcp.ParamsModifier(residual_diff_threshold=0.0)], backend="eager")
    with torch.no_grad():
        for s in range(5):  # interleave the two experts' calls: no cross-talk
            pipe.transformer(**toy_inputs(s))
            pipe.transformer_2(**toy_inputs(s))
    assert dcp.summary(pipe.transformer).cached_steps and not dcp.summary(pipe.transformer_2).cached_steps
    assert pipe.transformer._dit_cachepass is not pipe.transformer_2._dit_cachepass
    with pytest.raises(ValueError, match=r"2 cached transformers \(transformer, transformer_2\).*pipe.transformer_2"):
        dcp.summary(pipe)  # which one: each has its own state
    dcp.disable_cache(pipe)
    assert not hasattr(pipe.transformer, "_dit_cachepass") and not hasattr(pipe.transformer_2, "_dit_cachepass")


def test_enable_cache_on_a_real_flux_pipeline_and_bad_input():
    e = ZOO["flux"]
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=e.build())
    assert dcp.enable_cache(pipe, dcp.FBCacheConfig(0.5), backend="eager") is pipe
    assert hasattr(pipe.transformer, "_dit_cachepass")
    # one cached transformer: the pipeline stands for it (as cache-dit's summary(pipe))
    assert dcp.summary(pipe).config_tag == dcp.summary(pipe.transformer).config_tag
    session = pipe.transformer._dit_cachepass
    session._pending_reset = False
    dcp.refresh(pipe)
    assert session._pending_reset  # the next call starts a new generation
    with pytest.raises(TypeError, match="a pipeline; pass its transformer"):
        dcp.compile(pipe, dcp.DBCacheConfig())
    with pytest.raises(ValueError, match="2 entries but the pipeline has 1"):
        dcp.enable_cache(pipe, params_modifiers=[None, None])
    with pytest.raises(TypeError, match="pipeline or an nn.Module"):
        dcp.enable_cache(object())
