"""The README's tiny-pipeline example runs as printed and caches steps (backend="eager" here
only to keep CI fast: the example itself compiles with Inductor)."""

import functools
import re
from pathlib import Path

import dit_cachepass as dcp

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_pipeline_example_runs_and_caches(monkeypatch, capsys):
    text = README.read_text()
    section = text.split("## Try it on a tiny pipeline", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setattr(dcp, "enable_cache", functools.partial(dcp.enable_cache, backend="eager"))
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    s = dcp.summary(scope["pipe"].transformer)
    assert scope["latents"].shape[0] == 1
    assert s.cached_steps and len(s.loops[0].steps) == 12, str(s)
    assert "cached" in capsys.readouterr().out
