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


def test_tensor_threshold_rejected_and_update_revalidates():
    # This test used to assert that a 0-d tensor threshold is accepted; the validation issue
    # asks configs to reject tensors where numbers are expected (a tensor in a config is
    # usually a mistake, e.g. a device tensor that syncs on every check), so it is now a
    # TypeError that says to pass float(t).
    with pytest.raises(TypeError, match=r"DBCacheConfig\.residual_diff_threshold=.*float\(t\)"):
        dcp.DBCacheConfig(residual_diff_threshold=torch.tensor(0.2))
    c = dcp.DBCacheConfig(residual_diff_threshold=float(torch.tensor(0.2)))
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
    with pytest.raises(TypeError, match=r"DBCacheConfig.*DBCacheConfig\(\*\*d\)"):
        dcp.compile(m, {"Fn_compute_blocks": 1})
    with pytest.raises(TypeError, match="FBCacheConfig"):
        dcp.compile(m, "fbcache")


@pytest.mark.parametrize("cls,kwargs,needle", [
    (dcp.DBCacheConfig, {"threshold": 0.1}, "'threshold' (did you mean 'residual_diff_threshold'?)"),
    (dcp.DBCacheConfig, {"Fn_compute_block": 1}, "did you mean 'Fn_compute_blocks'?"),
    (dcp.DBPruneConfig, {"residual_diff_treshold": 0.1}, "did you mean 'residual_diff_threshold'?"),
    (dcp.TaylorSeerCalibratorConfig, {"order": 2}, "did you mean 'taylorseer_order'?"),
    (dcp.ParallelismConfig, {"ulysses": 2}, "did you mean 'ulysses_size'?"),
    (dcp.FBCacheConfig, {"threshold": 0.2}, "did you mean 'residual_diff_threshold'?"),
    (dcp.DBCacheConfig, {"force_refresh_step_hint": 10}, "cache-dit field dit_cachepass does not take"),
    (dcp.DBCacheConfig, {"zzz": 1}, "'zzz'. DBCacheConfig's fields: Fn_compute_blocks"),
    (dcp.DBCacheConfig, {"downsample_factor": 4}, "strided diff would save no memory here"),
    (dcp.DBCacheConfig, {"important_condition_threshold": 0.2}, "forecast_check=True"),
])
def test_misspelt_fields_name_the_closest_one(cls, kwargs, needle):
    with pytest.raises(TypeError) as err:
        cls(**kwargs)
    assert needle in str(err.value)


def test_params_modifier_names_the_closest_field():
    with pytest.raises(ValueError, match=r"ParamsModifier got .*'threshold' \(did you mean 'residual_diff_threshold'\?\)"):
        dcp.ParamsModifier(threshold=0.1)


def test_configs_keep_their_dataclass_signature():
    import inspect

    assert "residual_diff_threshold" in inspect.signature(dcp.DBCacheConfig).parameters
    assert dcp.DBCacheConfig(2, 1).Bn_compute_blocks == 1  # positional arguments still bind


def test_parallelism_config_validates_itself():
    assert dcp.ParallelismConfig(ulysses_size=2, ring_size=2).world_size == 4
    assert dcp.ParallelismConfig(tp_size=2).strify() == "TP2"
    with pytest.raises(ValueError, match="tp_size=0"):
        dcp.ParallelismConfig(tp_size=0)
    with pytest.raises(ValueError, match="cannot be combined"):
        dcp.ParallelismConfig(ulysses_size=2, tp_size=2)
    with pytest.raises(ValueError, match="nothing to parallelize"):
        dcp.ParallelismConfig(ulysses_size=1)


# -- types: every field rejects values of the wrong type, naming the field -----------------------

def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))


@pytest.mark.parametrize("cls,field", [
    (dcp.DBCacheConfig, "enable_separate_cfg"),
    (dcp.DBCacheConfig, "cfg_compute_first"),
    (dcp.DBCacheConfig, "cfg_diff_compute_separate"),
    (dcp.DBCacheConfig, "detect_new_generation"),
    (dcp.DBPruneConfig, "enable_dynamic_prune_threshold"),
    (dcp.TaylorSeerCalibratorConfig, "enable_calibrator"),
    (dcp.TaylorSeerCalibratorConfig, "enable_encoder_calibrator"),
    (dcp.FoCaCalibratorConfig, "enable_calibrator"),
])
def test_string_bools_are_type_errors(cls, field):
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}='False'.*pass True or False"):
        cls(**{field: "False"})
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}=1\b"):
        cls(**{field: 1})


def test_parallelism_config_bool_and_types():
    with pytest.raises(TypeError, match=r"ParallelismConfig\.ulysses_anything='True'"):
        dcp.ParallelismConfig(ulysses_size=2, ulysses_anything="True")
    with pytest.raises(TypeError, match=r"ParallelismConfig\.ulysses_size=2\.0"):
        dcp.ParallelismConfig(ulysses_size=2.0)
    with pytest.raises(TypeError, match=r"ParallelismConfig\.tp_size=True"):
        dcp.ParallelismConfig(tp_size=True)
    with pytest.raises(TypeError, match=r"ParallelismConfig\.attention_backend=3"):
        dcp.ParallelismConfig(ulysses_size=2, attention_backend=3)


@pytest.mark.parametrize("field", ["residual_diff_threshold", "max_accumulated_residual_diff_threshold"])
def test_bool_for_a_number_is_a_type_error(field):
    with pytest.raises(TypeError, match=rf"DBCacheConfig\.{field}=True is invalid: expected a finite float"):
        dcp.DBCacheConfig(**{field: True})


@pytest.mark.parametrize("field,value", [
    ("Fn_compute_blocks", True), ("Bn_compute_blocks", False), ("max_warmup_steps", 2.0),
    ("warmup_interval", torch.tensor(1)), ("num_inference_steps", "28"), ("max_cached_steps", None),
])
def test_ints_reject_bools_floats_tensors_strings(field, value):
    with pytest.raises(TypeError, match=rf"DBCacheConfig\.{field}=.*expected an int"):
        dcp.DBCacheConfig(**{field: value})


@pytest.mark.parametrize("cls,field,value", [
    (dcp.DBCacheConfig, "residual_diff_threshold", torch.tensor(0.1)),
    (dcp.DBCacheConfig, "max_accumulated_residual_diff_threshold", torch.tensor(0.5)),
    (dcp.DBPruneConfig, "max_dynamic_prune_threshold", torch.tensor(0.3)),
    (dcp.DBPruneConfig, "dynamic_prune_threshold_relax_ratio", torch.tensor(1.5)),
])
def test_tensor_numbers_are_type_errors(cls, field, value):
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}=tensor.*got torch\.Tensor.*float\(t\)"):
        cls(**{field: value})


def test_strings_for_numbers_and_bad_lists():
    with pytest.raises(TypeError, match=r"residual_diff_threshold='0\.1'.*not a string"):
        dcp.DBCacheConfig(residual_diff_threshold="0.1")
    with pytest.raises(TypeError, match=r"steps_computation_mask=\['1', '0'\]"):
        dcp.DBCacheConfig(steps_computation_mask=["1", "0"])
    with pytest.raises(TypeError, match=r"steps_computation_mask='101'"):
        dcp.DBCacheConfig(steps_computation_mask="101")
    with pytest.raises(TypeError, match=r"steps_computation_mask=\[True, False\]"):
        dcp.DBCacheConfig(steps_computation_mask=[True, False])
    with pytest.raises(ValueError, match=r"steps_computation_mask=\[\]"):
        dcp.DBCacheConfig(steps_computation_mask=[])
    assert dcp.DBCacheConfig(steps_computation_mask=(1, 0, 1)).steps_computation_mask == [1, 0, 1]
    with pytest.raises(TypeError, match=r"DBPruneConfig\.non_prune_block_ids=3"):
        dcp.DBPruneConfig(non_prune_block_ids=3)
    with pytest.raises(TypeError, match=r"DBCacheConfig\.loop_layout=1"):
        dcp.DBCacheConfig(loop_layout=1)
    with pytest.raises(TypeError, match=r"TaylorSeerCalibratorConfig\.taylorseer_order=1\.0"):
        dcp.TaylorSeerCalibratorConfig(taylorseer_order=1.0)


def test_type_errors_are_also_value_errors_for_old_callers():
    # before type checks, every bad field raised ValueError; callers catching it still work
    with pytest.raises(ValueError):
        dcp.DBCacheConfig(residual_diff_threshold=True)
    with pytest.raises(ValueError):
        dcp.DBCacheConfig(detect_new_generation="False")


def test_numeric_like_values_still_accepted():
    c = dcp.DBCacheConfig(residual_diff_threshold=0, max_accumulated_residual_diff_threshold=1)
    assert c.threshold == 0.0
    assert dcp.DBCacheConfig(enable_separate_cfg=None).enable_separate_cfg is None


@pytest.mark.parametrize("cls,kwargs", [
    (dcp.DBCacheConfig, dict(Fn_compute_blocks=2, Bn_compute_blocks=1, max_warmup_steps=3, warmup_interval=2,
                             max_cached_steps=5, max_continuous_cached_steps=2, num_inference_steps=20)),
    (dcp.DBPruneConfig, dict(Fn_compute_blocks=2, max_warmup_steps=3)),
    (dcp.TaylorSeerCalibratorConfig, dict(taylorseer_order=2)),
    (dcp.DMDCalibratorConfig, dict(dmd_history=5, dmd_rank=2)),
    (dcp.ParallelismConfig, dict(tp_size=2)),
    (dcp.ParallelismConfig, dict(ulysses_size=2, ring_size=1)),
])
@pytest.mark.parametrize("np_int", ["int64", "int32", "uint8"])
def test_numpy_ints_are_stored_as_plain_ints(cls, kwargs, np_int):
    np = pytest.importorskip("numpy")
    c = cls(**{k: getattr(np, np_int)(v) for k, v in kwargs.items()})
    for k, v in kwargs.items():
        got = getattr(c, k)
        assert type(got) is int and got == v, f"{cls.__name__}.{k} stored as {type(got).__name__}"
    assert "numpy" not in repr(c) and "np." not in repr(c)


def test_numpy_numbers_are_normalised_after_mutation_and_in_modifiers():
    np = pytest.importorskip("numpy")
    c = dcp.DBCacheConfig(residual_diff_threshold=np.float32(0.25), max_accumulated_residual_diff_threshold=np.float64(1))
    assert type(c.residual_diff_threshold) is float and c.residual_diff_threshold == 0.25
    assert type(c.max_accumulated_residual_diff_threshold) is float
    c.Fn_compute_blocks = np.int64(4)  # assigned after construction: validate() (run by compile) normalises
    c.validate()
    assert type(c.Fn_compute_blocks) is int and c.strify().startswith("DBCache_F4B0")
    applied = dcp.ParamsModifier(Fn_compute_blocks=np.int64(3)).apply(dcp.DBCacheConfig())
    assert type(applied.Fn_compute_blocks) is int and applied.Fn_compute_blocks == 3
    d = dcp.DMDCalibratorConfig(dmd_ridge=np.float32(0.5))
    assert type(d.dmd_ridge) is float
    # bools and numpy bools are not numbers here, before or after
    with pytest.raises(TypeError):
        dcp.DBCacheConfig(Fn_compute_blocks=np.bool_(True))


def test_params_modifier_rejects_non_config_values():
    with pytest.raises(TypeError, match=r"ParamsModifier.*DBCacheConfig\.residual_diff_threshold='0\.1'"):
        dcp.ParamsModifier(residual_diff_threshold="0.1")
    with pytest.raises(TypeError, match=r"ParamsModifier\.cache_config=\{\}.*DBCacheConfig"):
        dcp.ParamsModifier(cache_config=dict())
    with pytest.raises(TypeError, match=r"ParamsModifier\.calibrator_config=.*TaylorSeerCalibratorConfig"):
        dcp.ParamsModifier(calibrator_config=dcp.DBCacheConfig())
    with pytest.raises(TypeError, match=r"DBCacheConfig\.detect_new_generation='no'"):
        dcp.ParamsModifier(detect_new_generation="no")
    pm = dcp.ParamsModifier(Fn_compute_blocks=2)
    pm.overrides["Fn_compute_blocks"] = 0  # mutated after construction
    with pytest.raises(ValueError, match="Fn_compute_blocks=0"):
        pm.validate()
    with pytest.raises(ValueError, match="Fn_compute_blocks=0"):
        dcp.compile(_mlp(), dcp.DBCacheConfig(), params_modifiers=pm, backend="eager")


def test_strict_must_be_a_bool():
    with pytest.raises(TypeError, match=r"strict='False'.*expected a bool"):
        dcp.compile(_mlp(), dcp.DBCacheConfig(), backend="eager", strict="False")


def test_fields_mutated_after_construction_are_checked_at_compile():
    cfg = dcp.DBCacheConfig()
    cfg.Fn_compute_blocks = 0
    with pytest.raises(ValueError, match=r"DBCacheConfig\.Fn_compute_blocks=0"):
        dcp.compile(_mlp(), cfg, backend="eager")
    cfg = dcp.DBCacheConfig()
    cfg.residual_diff_threshold = True
    with pytest.raises(TypeError, match=r"DBCacheConfig\.residual_diff_threshold=True"):
        dcp.compile(_mlp(), cfg, backend="eager")
    cal = dcp.TaylorSeerCalibratorConfig()
    cal.enable_calibrator = "False"
    with pytest.raises(TypeError, match=r"TaylorSeerCalibratorConfig\.enable_calibrator='False'"):
        dcp.compile(_mlp(), dcp.DBCacheConfig(), calibrator_config=cal, backend="eager")
    cfg = dcp.DBCacheConfig()
    cfg.validate()  # an untouched config passes again
    cfg.cfg_diff_compute_separate, cfg.cfg_compute_first = False, True
    with pytest.raises(ValueError, match="cfg_compute_first"):
        cfg.validate()


def test_strict_raises_unsupported_model_error_itself():
    m = dcp.compile(_mlp(), dcp.DBCacheConfig(), backend="eager", strict=True)
    with pytest.raises(dcp.UnsupportedModelError) as err:
        with torch.no_grad():
            m(torch.randn(2, 4))
    assert type(err.value) is dcp.UnsupportedModelError
    assert "strict=True" in str(err.value)
