"""LoRA through diffusers' PEFT integration (``add_adapter``, ``set_adapters``, the scale in
``joint_attention_kwargs``, ``disable_adapters``) on a cached FLUX: what FLUX users run most.

A scale or adapter change makes dynamo recompile (it guards the LoRA scalings, as under plain
torch.compile), so the pass runs again on the new graph; the cache state must not carry a
residual made under one LoRA setting into a generation under another. Inputs are the zoo's
slowly varying ones (threshold 0.5 caches most steps of the random-weight model). The eager
backend: what is checked (capture, recompiles, decisions, state) does not depend on it."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO

peft = pytest.importorskip("peft", reason="peft is in the test extras")

STEPS = 6
E = ZOO["flux"]


def with_lora(**adapter_kw):
    """The zoo's FLUX with one random (non-zero) LoRA adapter on its attention projections."""
    torch.manual_seed(0)
    m = E.build()
    torch.manual_seed(1)
    m.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                  init_lora_weights=False), adapter_name="style")
    return m


def generate(model, **kw):
    with torch.no_grad():
        return torch.stack([model(**E.inputs(s, STEPS, 1.0), return_dict=False, **kw)[0] for s in range(STEPS)])


def test_threshold_zero_equals_the_lora_model_through_scale_and_adapter_changes():
    ref = with_lora()
    m = dcp.compile(with_lora(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                   residual_diff_threshold=0.0), backend="eager", strict=True)
    assert torch.equal(generate(m), generate(ref))
    half = {"joint_attention_kwargs": {"scale": 0.3}}
    out = generate(m, **half)
    assert torch.equal(out, generate(ref, **half))
    assert not torch.equal(out, generate(ref))  # the scale reached the LoRA layers, or this proves nothing
    for x in (m, ref):
        x.disable_adapters()
    assert torch.equal(generate(m), generate(ref))
    assert sum(len(g.loops) for g in m._dit_cachepass.graphs) >= 2  # the recompiled graphs were cached too


def test_a_generation_after_a_lora_change_equals_a_fresh_model_under_that_lora():
    """Cached steps under the new setting reuse only residuals of the new setting: the output
    equals a fresh cached model's that has only ever run with it (same decisions)."""
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1)
    m = dcp.compile(with_lora(), cfg, backend="eager")
    generate(m)
    assert dcp.summary(m).cached_steps
    half = {"joint_attention_kwargs": {"scale": 0.3}}
    out = generate(m, **half)
    fresh = dcp.compile(with_lora(), cfg, backend="eager")
    assert torch.equal(out, generate(fresh, **half))
    assert dcp.summary(m).cached_steps == dcp.summary(fresh).cached_steps != []
