import pytest
import torch

import dit_cachepass as dcp


@pytest.mark.parametrize("field,value,needle", [
    ("Fn_compute_blocks", 0, "Fn_compute_blocks=0"),
    ("Fn_compute_blocks", 1.5, "an int >= 1"),
    ("Bn_compute_blocks", -1, "Bn_compute_blocks"),
    ("residual_diff_threshold", -0.1, "finite float >= 0"),
    ("residual_diff_threshold", float("nan"), "residual_diff_threshold"),
    ("max_warmup_steps", -2, "max_warmup_steps"),
    ("warmup_interval", 0, "warmup_interval"),
    ("max_cached_steps", -5, "an int >= -1"),
    ("max_continuous_cached_steps", "3", "max_continuous_cached_steps"),
    ("num_inference_steps", 0, "num_inference_steps"),
    ("steps_computation_mask", [1, 2], "0/1"),
    ("steps_computation_policy", "sometimes", "'dynamic' or 'static'"),
    ("loop_layout", "zigzag", "loop_layout"),
])
def test_bad_values_name_the_field_and_range(field, value, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")) as err:
        dcp.DBCacheConfig(**{field: value})
    assert field in str(err.value)


def test_defaults_follow_cache_dit_1_5_3():
    c = dcp.DBCacheConfig()
    assert (c.Fn_compute_blocks, c.Bn_compute_blocks, c.residual_diff_threshold) == (8, 0, 0.08)
    assert (c.max_warmup_steps, c.warmup_interval, c.max_cached_steps, c.max_continuous_cached_steps) == (8, 1, -1, -1)
    assert c.strify() == "DBCache_F8B0_W8I1M0MC0_R0.08"


def test_tensor_threshold_and_update_revalidates():
    c = dcp.DBCacheConfig(residual_diff_threshold=torch.tensor(0.2))
    assert c.threshold == pytest.approx(0.2)
    assert c.update(Fn_compute_blocks=2).Fn_compute_blocks == 2
    with pytest.raises(ValueError, match="Bn_compute_blocks"):
        c.update(Bn_compute_blocks=-3)


def test_fbcache_is_f1b0():
    c = dcp.FBCacheConfig(0.1)
    assert (c.Fn_compute_blocks, c.Bn_compute_blocks, c.threshold) == (1, 0, 0.1)


def test_cfg_diff_reuse_requires_cond_first():
    with pytest.raises(ValueError, match="cfg_compute_first"):
        dcp.DBCacheConfig(enable_separate_cfg=True, cfg_diff_compute_separate=False, cfg_compute_first=True)
    assert dcp.DBCacheConfig(enable_separate_cfg=True, cfg_compute_first=True).cfg_compute_first


def test_bad_backend_and_config_type():
    m = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="backend='tvm'"):
        dcp.compile(m, dcp.DBCacheConfig(), backend="tvm")
    with pytest.raises(TypeError, match="DBCacheConfig"):
        dcp.compile(m, {"Fn_compute_blocks": 1})


def test_parallelism_config_validates_itself():
    assert dcp.ParallelismConfig(ulysses_size=2, ring_size=2).world_size == 4
    assert dcp.ParallelismConfig(tp_size=2).strify() == "TP2"
    with pytest.raises(ValueError, match="tp_size=0"):
        dcp.ParallelismConfig(tp_size=0)
    with pytest.raises(ValueError, match="cannot be combined"):
        dcp.ParallelismConfig(ulysses_size=2, tp_size=2)
    with pytest.raises(ValueError, match="nothing to parallelize"):
        dcp.ParallelismConfig(ulysses_size=1)
