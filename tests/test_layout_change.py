"""An input that changes shape within one generation never reuses what the branch stored."""

import warnings

import pytest
import torch

import dit_cachepass as dcp

pytest.importorskip("diffusers")
from diffusers import FluxTransformer2DModel  # noqa: E402

THRESHOLD = 0.9  # random weights change a lot between steps: a high threshold makes steps cache


def _model():
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)).eval()


def _inputs(step, text_tokens, drift=0.0):
    """Slowly varying latents (a small drift per step), so that steps cache."""
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(1, 16, 16, generator=g) + drift * step
    ehs = torch.randn(1, text_tokens, 32, generator=g)
    return dict(hidden_states=hs, encoder_hidden_states=ehs, pooled_projections=torch.randn(1, 32, generator=g),
                timestep=torch.tensor([1.0 - step / 10]), img_ids=torch.zeros(16, 3),
                txt_ids=torch.zeros(text_tokens, 3), return_dict=False)


def test_text_length_change_mid_generation_computes_and_restarts():
    plain = _model()
    cached = dcp.compile(_model(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1,
                                                     residual_diff_threshold=THRESHOLD), backend="eager")
    tokens = [8, 8, 8, 12, 12, 12]
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught, dcp.generation(cached):
        warnings.simplefilter("always")
        outs = [cached(**_inputs(k, n, 0.01))[0] for k, n in enumerate(tokens)]
        refs = [plain(**_inputs(k, n, 0.01))[0] for k, n in enumerate(tokens)]
    state = next(iter(dcp.api._session(cached).states.values()))
    recs = {r.step: r for r in state.records}
    assert recs[1].cached or recs[2].cached, "the test needs cached steps before the change"
    assert not recs[3].cached and recs[3].reason == "shape-change"
    assert torch.equal(outs[3], refs[3]), "the step where the text length changed must equal the plain model"
    assert recs[4].cached or recs[5].cached, "after the change the branch caches again, against the new inputs"
    assert any("changed shape or dtype within one generation" in str(w.message) for w in caught)


def test_new_generation_with_another_length_does_not_warn():
    cached = dcp.compile(_model(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1,
                                                     residual_diff_threshold=THRESHOLD), backend="eager")
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (8, 12):
            with dcp.generation(cached):
                for k in range(4):
                    cached(**_inputs(k, n, 0.01))
    assert not any("within one generation" in str(w.message) for w in caught)


def test_enable_separate_cfg_false_shares_one_state_across_named_branches():
    """Issue 24.4: the user's explicit enable_separate_cfg=False holds with named branches (cache-dit's
    meaning: one state); None keeps a state per branch."""
    def run(separate):
        m = dcp.compile(_model(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1,
                                                    residual_diff_threshold=THRESHOLD, enable_separate_cfg=separate),
                        backend="eager")
        with torch.no_grad(), dcp.generation(m):
            for k in range(4):
                for name in ("cond", "uncond"):
                    with dcp.branch(m, name, step_index=k):
                        m(**_inputs(k, 8 if name == "cond" else 4, 0.01))
        return dcp.api._session(m).states

    assert len(run(None)) == 2
    (shared,) = run(False).values()
    assert len(shared.records) == 8


def test_per_frame_timestep_with_a_constant_first_entry_still_caches():
    """Issue 24.5: a timestep with one entry per frame (or sample) whose first entry never changes
    (an image-to-video conditioning frame kept at 0) is one step per call, not CFG repeats."""
    m = dcp.compile(_model(), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, max_warmup_steps=1,
                                                residual_diff_threshold=THRESHOLD), backend="eager")
    with torch.no_grad(), dcp.generation(m):
        for k in range(6):
            x = _inputs(k, 8, 0.01)
            x["hidden_states"] = x["hidden_states"].repeat(2, 1, 1)
            x["encoder_hidden_states"] = x["encoder_hidden_states"].repeat(2, 1, 1)
            x["pooled_projections"] = x["pooled_projections"].repeat(2, 1)
            x["timestep"] = torch.tensor([0.0, 1.0 - k / 10])
            m(**x)
    (state,) = dcp.api._session(m).states.values()
    assert [r.step for r in state.records] == list(range(6))
    assert state.cached_steps
