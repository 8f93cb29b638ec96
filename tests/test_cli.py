"""The demo CLI follows argparse conventions; the digits part runs end to end."""

import pytest

from dit_cachepass import cli, demo


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
