"""The demo's own logic: interleaved timing, the busy-machine verdict, thread choice, the quiet
import, and a tiny end-to-end run of the speed part."""

import os
import subprocess
import sys

import pytest

from dit_cachepass.tools import demo
from dit_cachepass.tools.demo import Row, busy_verdict, choose_threads, ratio_spread, round_orders


def test_round_orders_run_every_variant_once_per_round_rotated():
    orders = round_orders(["base", "a", "b"], 4)
    assert len(orders) == 4
    assert all(sorted(o) == ["a", "b", "base"] for o in orders)
    assert [o[0] for o in orders] == ["base", "a", "b", "base"]  # no variant always goes first
    assert [o[-1] for o in orders[:3]] == ["b", "base", "a"]
    assert round_orders(["only"], 2) == [["only"], ["only"]]


def test_ratio_spread_is_half_range_over_median():
    assert ratio_spread([1.5]) == 0.0
    assert ratio_spread([1.5, 1.5, 1.5]) == 0.0
    assert ratio_spread([1.4, 1.5, 1.6]) == pytest.approx(0.1 / 1.5)
    assert ratio_spread([2.0, 1.0, 1.5]) == pytest.approx(0.5 / 1.5)


def _row(name, base_times, times):
    r = Row(name, "5/20", 1.5, 0.01, times=list(times))
    r.ratios = [b / t for b, t in zip(base_times, times)]
    return r


def test_busy_verdict_flags_disagreeing_rounds_only():
    base = [2.0, 2.0, 2.0]
    steady = [_row("no cache", base, base), _row("cached", base, [1.30, 1.33, 1.35])]
    assert busy_verdict(steady) is None
    # the loaded-machine case from the issue: one round stalls the cached variant
    busy = [_row("no cache", base, base), _row("cached", base, [1.30, 1.33, 5.9])]
    msg = busy_verdict(busy)
    assert msg is not None and msg.startswith("this machine was busy: speed numbers unreliable")
    assert "±" in msg and "%" in msg
    # a slow machine that is slow for every variant alike is not "busy": ratios agree
    uniform = [_row("no cache", [2.0, 4.0, 3.0], [2.0, 4.0, 3.0]), _row("cached", [2.0, 4.0, 3.0], [1.3, 2.6, 1.95])]
    assert busy_verdict(uniform) is None
    assert busy_verdict([_row("no cache", [2.0], [2.0])]) is None  # one round: nothing to compare


def test_row_medians():
    r = _row("cached", [2.0, 2.2, 1.8], [1.0, 2.0, 1.2])
    assert r.wall_s == 1.2
    assert r.speedup == pytest.approx(1.5)


def test_choose_threads():
    assert choose_threads(env={"OMP_NUM_THREADS": "3"}, cpu_count=2, load=5.0) == 3   # explicit wins
    assert choose_threads(env={}, cpu_count=2, load=0.2) == 1     # 2 cores, not both idle
    assert choose_threads(env={}, cpu_count=2, load=3.5) == 1     # loaded
    assert choose_threads(env={}, cpu_count=16, load=1.0) == 2    # idle cores: 2, never more
    assert choose_threads(env={"OMP_NUM_THREADS": ""}, cpu_count=1, load=0.0) == 1


def test_hide_unused_packages_only_hides_what_is_not_imported():
    name = "dit_cachepass_surely_not_a_package"
    try:
        assert demo.hide_unused_packages((name, "sys")) == [name]
        with pytest.raises(ImportError):
            __import__(name)
        assert sys.modules["sys"] is sys
    finally:
        sys.modules.pop(name, None)


def test_demo_imports_print_no_third_party_warnings():
    """The demo process imports diffusers' model classes without torchao (installed by the test
    extra), so none of torchao's "Failed to load ... _C_mxfp8" lines or pytree warnings appear."""
    pytest.importorskip("diffusers")
    code = ("from dit_cachepass.tools import demo; demo.hide_unused_packages()\n"
            "from diffusers import FluxTransformer2DModel, FlowMatchEulerDiscreteScheduler\n"
            "from dit_cachepass.demo_model import load_digits_dit; load_digits_dit()\n"
            "import sys; print('torchao imported:', sys.modules.get('torchao') is not None)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "torchao imported: False" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    import torch

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                  pooled_projection_dim=64, axes_dims_rope=(4, 6, 6)).eval()


def test_speed_part_tiny_eager_run():
    pytest.importorskip("diffusers")
    import torch

    cfg = demo.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=10.0,
                             max_warmup_steps=2, max_continuous_cached_steps=2)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = demo.run(steps=5, backend="eager", repeats=2, configs={"always": cfg}, progress=False,
                        inputs=demo.make_inputs(tokens=16, text=4), model_fn=_tiny_flux)
    finally:
        torch.set_num_threads(n)
    base, cached = rows
    assert base.name == "no cache" and cached.name == "always"
    assert len(base.times) == len(cached.times) == 2 and base.ratios == [1.0, 1.0]
    assert len(cached.ratios) == 2 and all(r > 0 for r in cached.ratios)
    assert cached.cached == "2/5" and cached.ideal > 1.0      # steps 2 and 3; step 4 computed (MC2)
    assert 0 < cached.rel_err < 1
    demo.print_rows(rows, 5, "eager")                           # renders without error
