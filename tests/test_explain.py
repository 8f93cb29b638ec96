"""dcp.explain names what it found and what to change; nesting torch.compile over dcp.compile
warns accurately and stays exact; ``python -m dit_cachepass explain --model <class> --tiny``."""

import warnings

import torch

import dit_cachepass as dcp
from dit_cachepass.tools import cli
from dit_cachepass.testing.zoo import ZOO
from toy_models import ToyDiT, toy_inputs


def test_default_config_on_few_blocks_lists_the_loop_and_the_fix():
    e = ZOO["flux"]  # 4 double + 4 single blocks: the default Fn_compute_blocks=8 leaves no middle
    rep = dcp.explain(e.build(), **e.inputs(0, 6, 1.0), return_dict=False)
    text = str(rep)
    assert not rep.cached and len(rep.uncached_loops) == 1, text
    lp = rep.uncached_loops[0]
    assert lp.name == "transformer_blocks+single_transformer_blocks" and lp.streams == 2, text
    assert lp.patterns == {"transformer_blocks": 1, "single_transformer_blocks": 1}, text
    assert len(lp.blocks) == 8 and "1 loop(s) found, 0 cached" in text, text
    assert "Fn_compute_blocks=8 + Bn_compute_blocks=0 >= 8 blocks" in text and "try Fn_compute_blocks=1" in text, text
    assert "no transformer block list" not in text, text


class MLP(torch.nn.Module):
    def __init__(self, breaks=False):
        super().__init__()
        self.breaks = breaks
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(4)])

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
            if self.breaks and float(x.sum()) > 1e9:  # data-dependent branch: a graph break
                x = x * 0
        return x


def test_mlp_has_no_transformer_block_list():
    rep = dcp.explain(MLP(), torch.randn(2, 8), cache_config=dcp.DBCacheConfig(Fn_compute_blocks=1))
    text = str(rep)
    assert not rep.found and rep.reasons[0].startswith("no transformer block list"), text
    assert "torch.nn.Linear layers, not transformer blocks" in text and "not a chain" not in text, text
    seq = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    assert "no transformer block list" in str(dcp.explain(seq, torch.randn(2, 8)))


def test_graph_break_is_named():
    rep = dcp.explain(MLP(breaks=True), torch.randn(2, 8))
    assert any(r.startswith("graph break:") for r in rep.reasons), str(rep)


def test_torch_compile_over_dcp_compile_warns_accurately_and_stays_exact():
    ref = ToyDiT().eval()
    m = ToyDiT().eval()
    m.load_state_dict(ref.state_dict())
    dcp.compile(m, dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=10.0,
                                     max_warmup_steps=0), backend="eager")
    outer = torch.compile(m, backend="eager")
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("always")
        for s in range(4):  # a threshold that would cache every step: any reuse would show
            torch.testing.assert_close(outer(**toy_inputs(s)), ref(**toy_inputs(s)), rtol=0, atol=0)
    msgs = [str(w.message) for w in rec if "dit_cachepass" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "outer torch.compile" in msgs[0] and "backend='dit_cache'" in msgs[0], msgs
    assert not any("recompile_limit" in x for x in msgs), msgs
    # explain on the torch.compile wrapper explains the module inside and says how to un-nest
    rep = dcp.explain(outer, **toy_inputs(0))
    assert rep.cached and any("instead of nesting" in n for n in rep.notes), str(rep)


def test_torch_compile_over_dcp_compile_warns_for_each_module():
    """Python's default filter shows a given text once per code location: the nesting warning
    must still reach the user for a second nested module (each module runs uncached), and
    stay once per module however many times it is traced or called."""
    cfg = dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=10.0,
                            max_warmup_steps=0)
    mods = []
    for _ in range(2):
        m = ToyDiT().eval()
        dcp.compile(m, cfg, backend="eager")
        mods.append(m)
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("default")  # Python's own default: once per text and location
        for m in mods:
            outer = torch.compile(m, backend="eager")
            for s in range(3):
                outer(**toy_inputs(s))
        # the same module nested again (a new outer compile): no second warning for it
        torch.compile(mods[0], backend="eager")(**toy_inputs(0))
    msgs = [str(w.message) for w in rec if "outer torch.compile" in str(w.message)]
    assert len(msgs) == 2, msgs
    assert all("ToyDiT" in x for x in msgs), msgs


def test_cli_explain_tiny_class(capsys):
    assert cli.main(["explain", "--model", "FluxTransformer2DModel", "--tiny", "--fn", "1", "--bn", "0"]) == 0
    out = capsys.readouterr().out
    assert "loop transformer_blocks+single_transformer_blocks" in out and "1 cached" in out, out
    assert "middle (cached): transformer_blocks.1 .. single_transformer_blocks.3 (7)" in out, out
    assert cli.main(["explain", "--model", "FluxTransformer", "--tiny"]) == 2
    assert "did you mean FluxTransformer2DModel" in capsys.readouterr().err
    assert cli.main(["explain", "--model", "FluxTransformer2DModel"]) == 2
    assert "only --tiny is supported" in capsys.readouterr().err
