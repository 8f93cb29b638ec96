"""Separate CFG: the pipeline calls the transformer twice per step (cond, uncond); each
branch keeps its own cache state, exactly as two independent single-branch runs would."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.runtime.session import Session
from toy_models import ToyDiT, toy_inputs

CFG = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=1)


def compiled(**cfg):
    torch.manual_seed(0)
    return dcp.compile(ToyDiT().eval(), dcp.DBCacheConfig(**{**CFG, **cfg}), backend="eager")


def branch_inputs(step, branch):
    x = toy_inputs(step)
    if branch:  # the uncond branch sees other conditioning: here, scaled latents
        x["hidden_states"] = x["hidden_states"] * 0.5 + 0.3
    return x


def run_calls(m, calls):
    with torch.no_grad():
        return [m(**branch_inputs(step, br)) for step, br in calls]


def independent(branch, steps):
    m = compiled(enable_separate_cfg=False)
    return m, run_calls(m, [(s, branch) for s in steps])


@pytest.mark.parametrize("order", ["cond_first", "uncond_first"])
def test_auto_separate_cfg_keeps_each_branch_like_an_independent_run(order):
    steps = range(6)
    first, second = (0, 1) if order == "cond_first" else (1, 0)
    m = compiled()
    outs = run_calls(m, [(s, br) for s in steps for br in (first, second)])
    m_first, ref_first = independent(first, steps)
    m_second, ref_second = independent(second, steps)
    for i, s in enumerate(steps):
        torch.testing.assert_close(outs[2 * i], ref_first[i], rtol=0, atol=0)
        torch.testing.assert_close(outs[2 * i + 1], ref_second[i], rtol=0, atol=0)
    loops = dcp.summary(m).loops
    assert [l.name for l in loops] == ["blocks", "blocks [cfg branch 1]"]
    assert loops[0].cached_steps == dcp.summary(m_first).cached_steps
    assert loops[1].cached_steps == dcp.summary(m_second).cached_steps
    assert loops[0].cached_steps and [r.step for r in loops[1].steps] == list(steps)


def test_auto_cfg_survives_a_pipeline_that_drops_the_uncond_call():
    """Guidance switched off after step 3 (one call per step from then on): the cond branch
    must keep its own state; cache-dit's parity keying would desynchronise here (§8.5)."""
    calls = [(s, br) for s in range(4) for br in (0, 1)] + [(s, 0) for s in range(4, 8)]
    m = compiled()
    outs = run_calls(m, calls)
    m0, ref0 = independent(0, range(8))
    cond_outs = [o for o, (s, br) in zip(outs, calls) if br == 0]
    for a, b in zip(cond_outs, ref0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert dcp.summary(m).loops[0].cached_steps == dcp.summary(m0).cached_steps


def test_parity_mode_and_cfg_compute_first():
    steps = range(5)
    m = compiled(enable_separate_cfg=True, cfg_compute_first=True, detect_new_generation=False)
    # cfg_compute_first: the uncond call (branch 1) comes first in every step
    outs = run_calls(m, [(s, br) for s in steps for br in (1, 0)])
    _, ref1 = independent(1, steps)
    _, ref0 = independent(0, steps)
    for i in range(len(steps)):
        torch.testing.assert_close(outs[2 * i], ref1[i], rtol=0, atol=0)
        torch.testing.assert_close(outs[2 * i + 1], ref0[i], rtol=0, atol=0)


def test_cfg_branch_can_reuse_the_cond_diff():
    m = compiled(enable_separate_cfg=True, cfg_diff_compute_separate=False)
    run_calls(m, [(s, br) for s in range(5) for br in (0, 1)])
    cond, unc = dcp.summary(m).loops
    assert unc.diffs and unc.diffs == {s: d for s, d in cond.diffs.items() if s in unc.diffs}
    assert unc.cached_steps == cond.cached_steps


def test_num_inference_steps_counts_pipeline_steps_under_cfg():
    m = compiled(num_inference_steps=3, detect_new_generation=False)
    run_calls(m, [(s, br) for s in range(3) for br in (0, 1)] + [(3, 0)])
    assert dcp.summary(m).loops[0].steps[-1].step == 0  # a new generation at the 4th step
    assert m._dit_cachepass.generation == 1


def test_constant_timestep_is_not_mistaken_for_many_cfg_branches():
    """Issue 12: a constant timestep says nothing about CFG or generations; the calls the
    heuristic cannot place compute (they used to go on caching on branch 0: a guess)."""
    m = compiled(max_warmup_steps=1)
    x = toy_inputs(0)
    with pytest.warns(UserWarning, match="timestep heuristic cannot decide"):
        with torch.no_grad():
            for _ in range(8):
                m(**x)
    assert len(m._dit_cachepass.states) <= Session.MAX_CFG_BRANCHES
    assert not dcp.summary(m).cached_steps


def test_timestep_is_read_from_the_input_not_from_a_parameter():
    from dit_cachepass.runtime.executor import _TIMESTEP

    assert _TIMESTEP.match("l_kwargs_timestep_") and _TIMESTEP.match("l_timestep_")
    assert not _TIMESTEP.match("l_self_dict_modules_time_text_embed_modules_timestep_embedder_parameters_weight_")
