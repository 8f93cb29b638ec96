"""The DBCache rule chain on plain numbers (cache-dit 1.5.3 §2 `can_cache`)."""

import math

import pytest

from dit_cachepass.config import DBCacheConfig
from dit_cachepass.runtime.policy import DBCachePolicy


def decide(cfg, step=10, n_cached=0, continuous=0, accumulated=0.0, has_ref=True, diff=0.01):
    return DBCachePolicy(cfg).decide(step, n_cached, continuous, accumulated, has_ref, lambda: diff)


def test_warmup_with_interval_lets_odd_steps_fall_through():
    cfg = DBCacheConfig(max_warmup_steps=6, warmup_interval=2, residual_diff_threshold=0.1)
    assert [decide(cfg, step=s).cache for s in range(8)] == [False, True, False, True, False, True, True, True]


def test_threshold_is_strict():
    cfg = DBCacheConfig(max_warmup_steps=0, residual_diff_threshold=0.1)
    assert decide(cfg, diff=0.0999).cache
    assert not decide(cfg, diff=0.1).cache


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_diff_computes(bad):
    d = decide(DBCacheConfig(max_warmup_steps=0, residual_diff_threshold=0.5), diff=bad)
    assert not d.cache and d.reason == "non-finite-diff"


def test_limits():
    base = dict(max_warmup_steps=0, residual_diff_threshold=0.5)
    assert not decide(DBCacheConfig(max_cached_steps=2, **base), n_cached=2).cache
    assert decide(DBCacheConfig(max_cached_steps=2, **base), n_cached=1).cache
    assert not decide(DBCacheConfig(max_continuous_cached_steps=1, **base), continuous=1).cache
    acc = DBCacheConfig(max_accumulated_residual_diff_threshold=0.3, **base)
    assert not decide(acc, accumulated=0.31).cache and decide(acc, accumulated=0.2).cache


def test_zero_threshold_never_caches_and_no_reference_computes():
    assert decide(DBCacheConfig(max_warmup_steps=0, residual_diff_threshold=0.0)).reason == "threshold<=0"
    assert decide(DBCacheConfig(max_warmup_steps=0), has_ref=False).reason == "no-reference"


def test_threshold_at_least_one_caches_but_reads_the_diff():
    """Issue 12: the diff is read (and must be finite) at any threshold."""
    d = decide(DBCacheConfig(max_warmup_steps=0, residual_diff_threshold=1.0), diff=5.0)
    assert d.cache and d.reason == "threshold>=1" and d.diff == 5.0
    for bad in (math.nan, math.inf):
        d = decide(DBCacheConfig(max_warmup_steps=0, residual_diff_threshold=1.0), diff=bad)
        assert not d.cache and d.reason == "non-finite-diff"


def test_mask_static_and_dynamic():
    mask = [1, 1, 0, 1, 0, 0]
    static = DBCacheConfig(max_warmup_steps=8, steps_computation_mask=mask, steps_computation_policy="static")
    # warmup is capped by the mask's leading ones (2), so step 2 follows the mask
    assert [decide(static, step=s, diff=0.9).cache for s in range(6)] == [False, False, True, False, True, True]
    dynamic = DBCacheConfig(steps_computation_mask=mask, residual_diff_threshold=0.1)
    assert not decide(dynamic, step=2, diff=0.5).cache and decide(dynamic, step=2, diff=0.05).cache
    assert decide(dynamic, step=99, diff=0.05).cache  # past the mask counts as 0
