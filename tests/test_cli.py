"""The demo CLI follows argparse conventions; the digits part runs end to end."""

import pytest

from dit_cachepass.tools import cli, demo


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--help"])
    assert e.value.code == 0 and "--part" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--part", "nope"])
    assert e.value.code == 2


def test_digits_demo_keeps_samples_faithful(tmp_path):
    rows = demo.run_digits(steps=12, per_class=1, out=str(tmp_path / "g.png"),
                           configs={"FB": demo.DIGITS_CONFIGS["FBCache F1B0 R0.12"]})
    base, cached = rows
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert cached.ideal >= 1.0 and cached.psnr > 25 and cached.accuracy >= 0.8


def _write(folder, names, seed, size=16):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for n in names:
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(folder / n)


def test_metrics_cli_psnr_ssim_and_clear_errors(tmp_path, capsys):
    _write(tmp_path / "ref", ["a.png", "b.png"], 0)
    _write(tmp_path / "same", ["a.png", "b.png"], 0)
    _write(tmp_path / "other", ["a.png", "c.png"], 1)
    assert cli.main(["metrics", "--ref", str(tmp_path / "ref"), "--gen", str(tmp_path / "same"),
                     "--no-lpips", "--no-fid"]) == 0
    out = capsys.readouterr().out
    assert "2 image pairs" in out and "SSIM  1.0000" in out
    assert cli.main(["metrics", "--ref", str(tmp_path / "ref"), "--gen", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "only in --ref: ['b.png']" in err and "only in --gen: ['c.png']" in err
    assert cli.main(["metrics", "--ref", str(tmp_path / "nope"), "--gen", str(tmp_path / "ref")]) == 2
