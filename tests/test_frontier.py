"""benchmarks/frontier.py: the quality-vs-speedup frontier runs end to end on the shipped digits DiT
(two families, two points each, tiny settings) and ``pareto`` keeps exactly the non-dominated points."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("torchmetrics")

import dit_cachepass as dcp  # noqa: E402
from dit_cachepass import demo_model as dm  # noqa: E402

pytestmark = pytest.mark.skipif(not dm.WEIGHTS_PATH.exists(), reason="digits_dit.safetensors not shipped")

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"


@pytest.fixture(scope="module")
def frontier():
    spec = importlib.util.spec_from_file_location("frontier", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["frontier"] = module   # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One thread: see conftest.one_thread."""


def test_pareto_keeps_exactly_the_non_dominated(frontier):
    R = frontier.Row
    a, b, c = R("f", "a", 1.0, math.inf), R("f", "b", 2.0, 30.0), R("f", "c", 3.0, 20.0)
    dominated = [R("f", "d", 1.5, 25.0),   # b is faster and better
                 R("f", "e", 2.0, 29.0),   # same speed as b, worse
                 R("f", "g", 0.9, 40.0)]   # a: faster, inf dB
    rows = [c, *dominated, b, a]
    assert frontier.pareto(rows) == [a, b, c]
    assert frontier.best_at(rows, 2.0) is b and frontier.best_at(rows, 3.5) is None


def test_run_frontier_digits_two_families(frontier):
    spec = frontier.digits_spec(per_class=1, eval_seeds=[100], cal_seeds=[0])
    assert not set(spec.eval_seeds) & set(spec.cal_seeds)
    rows = frontier.run_frontier(spec, ["DBCache", "DBCache+TaylorSeer O1"], steps=8, thresholds=[0.0, 0.4],
                                 max_continuous=[-1], progress=False)
    assert [(r.family, r.label.split()[1]) for r in rows] == [
        ("DBCache", "R0"), ("DBCache", "R0.4"), ("DBCache+TaylorSeer O1", "R0"), ("DBCache+TaylorSeer O1", "R0.4")]
    for r in rows:
        assert math.isfinite(r.speedup) and r.speedup >= 1.0
        assert 0.0 <= r.accuracy <= 1.0 and -1.0 <= r.ssim <= 1.0 + 1e-6
    for r in (rows[0], rows[2]):   # threshold 0 never caches: the uncached output, to rounding
        assert r.cached_steps == 0 and r.speedup == pytest.approx(1.0)
        assert r.psnr > 60.0 and r.ssim > 0.999
    assert rows[1].speedup > 1.0 and rows[1].psnr < rows[0].psnr


def test_main_quick_writes_plot_and_json(frontier, tmp_path):
    out = frontier.main(["--quick", "--models", "digits", "--families", "DBPrune", "--thresholds", "0.3",
                         "--eval-seeds", "100", "--plot-dir", str(tmp_path), "--json", str(tmp_path / "rows.json")])
    assert [r.family for r in out["digits"]] == ["DBPrune"]
    assert (tmp_path / "frontier_digits.png").stat().st_size > 0
    assert json.loads((tmp_path / "rows.json").read_text())["digits"][0]["steps"] == 10


def test_summary_has_a_margin_column_for_a_new_family(frontier):
    from types import SimpleNamespace

    R = frontier.Row
    rows = [R("DBCache", "x", 2.1, 30.0), R("DBPrune", "y", 1.6, 33.0), R("planned", "z", 2.0, 34.5)]
    spec = SimpleNamespace(name="toy", eval_seeds=[100], eval_labels=torch.arange(10))
    text = frontier.tables(spec, rows, 1.0, 10)
    assert "planned - cache-dit" in text
    line_2x = next(l for l in text.splitlines() if l.strip("│ ").startswith("2x"))
    assert "+4.50" in line_2x and "+1.50" in next(l for l in text.splitlines() if l.strip("│ ").startswith("1.5x"))


def test_bands_read_the_bar_at_every_speedup_not_only_the_targets(frontier):
    """A cache-dit point just above one of ours faces our NEXT point: the band between them is
    where a whole-budget staircase falls short, though every target (1.5x, 2x, ...) passes."""
    R = frontier.Row
    anchors = [R("DBCache", "a1", 1.52, 50.0), R("DBCache", "a2", 2.11, 45.0), R("DBCache", "a3", 3.2, 20.0)]
    new = [R("planned", "n1", 1.56, 54.0), R("planned", "n2", 2.0, 49.0), R("planned", "n3", 2.55, 43.0)]
    bs = frontier.bands(anchors, new, 1.5, 3.0)
    got = [(round(b.lo, 2), round(b.hi, 2), b.anchor.label, b.new.label if b.new else None) for b in bs]
    assert got == [(1.5, 1.52, "a1", "n1"), (1.52, 1.56, "a2", "n1"), (1.56, 2.0, "a2", "n2"),
                   (2.0, 2.11, "a2", "n3"), (2.11, 2.55, "a3", "n3"), (2.55, 3.0, "a3", None)]
    assert [b.margin for b in bs] == [4.0, 9.0, 4.0, -2.0, 23.0, -math.inf]
    # the bands tile [lo, hi] with no gap
    assert bs[0].lo == 1.5 and bs[-1].hi == 3.0 and all(p.hi == q.lo for p, q in zip(bs, bs[1:]))


def test_merge_adds_an_earlier_runs_rows_and_the_bar_table_names_the_short_band(frontier, tmp_path):
    from types import SimpleNamespace

    R = frontier.Row
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"toy": [
        {**frontier.asdict(R("DBCache", "a", 2.11, 45.0, steps=10)), "ssim": "nan"}]}))
    rows = [*frontier.merged_rows([str(earlier)], "toy", 10), R("planned", "n", 2.0, 49.0, steps=10),
            R("planned", "m", 3.1, 44.0, steps=10)]
    assert rows[0].family == "DBCache" and math.isnan(rows[0].ssim)
    spec = SimpleNamespace(name="toy", eval_seeds=[100], eval_labels=torch.arange(10))
    text = frontier.tables(spec, rows, 1.0, 10)
    assert "lowest margin -1.00 dB on (2.000, 2.110]x; 1 band(s) under +3 dB" in " ".join(text.split())
    with pytest.raises(SystemExit, match="same --steps"):
        frontier.merged_rows([str(earlier)], "toy", 28)


def test_a_refined_rows_label_gives_back_its_plan(frontier):
    row = frontier.Row("planned call, refined", "planned 11/28 T1O1 DC R60 1101001001001001001001001010", 2.55, 45.8)
    assert frontier._plan_of(row) == (11, [int(c) for c in "1101001001001001001001001010"], "T1O1 DC")


def test_every_whole_call_filler_has_its_own_label_and_a_valid_config(frontier):
    """Restarts find an earlier plan's filler by its label, so labels must be unique, and each
    filler's correction fields must make a valid whole-call config."""
    from dit_cachepass.tuning import planner

    fillers = planner.whole_call_fillers()
    labels = [frontier._filler_label(c, fix) for c, fix in fillers]
    assert len(set(labels)) == len(labels) == 9
    assert {"T1O1", "T1O1 DC", "T1O1 DC0.5", "DMD DC0.5"} <= set(labels)
    for _, fix in fillers:
        cfg = dcp.DBCacheConfig(steps_computation_mask=[1, 0, 1], skip_whole_call=True, **fix)
        assert cfg.correct_skipped_power == fix.get("correct_skipped_power", 0.0)


def test_merged_refined_runs_keep_the_last_plan_per_budget_not_the_best_on_the_held_out_seeds(frontier):
    R = frontier.Row
    rows = [R("planned call, refined", "planned 9/28 T1O1 DC R60 1100", 3.11, 43.2),
            R("planned call, refined", "planned 10/28 T1O1 DC R60 1110", 2.8, 45.8),
            R("DBCache", "F1B0 R0.2", 2.0, 40.0),
            R("planned call, refined", "planned 9/28 T1O1 DC0.5 R285 1010", 3.11, 45.0),
            R("planned call, refined", "planned 10/28 DMD DC R90 1101", 2.8, 45.5)]
    got = [r.label for r in frontier.latest_refined(rows)]
    assert got == ["F1B0 R0.2", "planned 9/28 T1O1 DC0.5 R285 1010", "planned 10/28 DMD DC R90 1101"]
