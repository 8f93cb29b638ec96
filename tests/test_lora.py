"""LoRA through diffusers' PEFT integration (``add_adapter``, the scale in
``joint_attention_kwargs``, ``disable_adapters``) on a cached FLUX: what FLUX users run most.

A scale or adapter change makes dynamo recompile (it guards the LoRA scalings, as under plain
torch.compile), so the pass runs again on the new graph; the cache state must not carry a
residual made under one LoRA setting into a generation under another. Inputs are the zoo's
slowly varying ones (threshold 0.5 caches most steps of the random-weight model). The eager
backend: what is checked (capture, recompiles, decisions, state) does not depend on it. One test:
each LoRA setting costs a dynamo trace (~7 s on the CI's cores)."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO

peft = pytest.importorskip("peft", reason="peft is in the test extras")

STEPS = 6
E = ZOO["flux"]


def with_lora():
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


def computed_equal(out, model, ref, **kw):
    """Every computed step equals the plain LoRA model (the zoo's inputs do not depend on earlier
    outputs, so a computed step sees exactly the plain model's input)."""
    want = generate(ref, **kw)
    cached = set(dcp.summary(model).cached_steps)
    return all(torch.equal(out[s], want[s]) for s in range(STEPS) if s not in cached)


def test_lora_changes_recompile_and_never_reuse_another_settings_residuals():
    """Scale 1, then scale 0.3, then adapters disabled, on one cached model: each computed step
    equals the plain LoRA model under that setting, and the scale-0.3 generation (cached steps
    included) equals a fresh cached model's that has only ever run at 0.3."""
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=1)
    ref = with_lora()
    m = dcp.compile(with_lora(), cfg, backend="eager", strict=True)
    out = generate(m)
    assert dcp.summary(m).cached_steps and computed_equal(out, m, ref)
    half = {"joint_attention_kwargs": {"scale": 0.3}}
    out_half = generate(m, **half)
    assert computed_equal(out_half, m, ref, **half)
    assert not torch.equal(out_half[0], out[0])  # the scale reached the LoRA layers, or this proves nothing
    fresh = dcp.compile(with_lora(), cfg, backend="eager")
    assert torch.equal(out_half, generate(fresh, **half))
    assert dcp.summary(m).cached_steps == dcp.summary(fresh).cached_steps != []
    for x in (m, ref):
        x.disable_adapters()
    assert computed_equal(generate(m), m, ref)
    assert sum(len(g.loops) for g in m._dit_cachepass.graphs) >= 3  # every recompiled graph was cached
