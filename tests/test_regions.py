"""Global-state regions (autocast, grad mode, vmap) survive the split: each piece re-enters
the regions its ops were in, so threshold 0 is bit-equal to eager and cached steps equal an
independent reference. Inputs vary slowly (toy_inputs: 1 % per step), thresholds are set
from the reference's own measured diffs."""

import pytest
import torch
from torch import nn

import dit_cachepass as dcp
from dit_cachepass.compiler.regions import RegionError, find_regions
from reference_dbcache import assert_caches_like_the_reference
from toy_models import toy_inputs


class StateBlock(nn.Module):
    def __init__(self, d, region):
        super().__init__()
        self.region = region
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.mod = nn.Linear(d, d)

    def forward(self, hidden_states, temb):
        if self.region == "autocast_block":  # the RoPE / norm guard new diffusers classes use
            with torch.autocast("cpu", enabled=False):
                x = self.norm(hidden_states.float())
        elif self.region == "no_grad_block":
            with torch.no_grad():
                x = self.norm(hidden_states)
        elif self.region == "vmap_block":  # a mask built per block with vmap (flex-attention style)
            scale = torch.vmap(lambda row: row.abs().mean() + 1)(hidden_states)
            x = self.norm(hidden_states) / scale[:, None, None]
        else:
            x = self.norm(hidden_states)
        return hidden_states + self.ff(x * (1 + self.mod(temb)[:, None]))


class StateDiT(nn.Module):
    """``region``: where a global-state region sits: before the loop, inside every block,
    around the whole loop (bf16 autocast: it changes numerics), or a vmap inside every block."""

    def __init__(self, region, d=32, n=6):
        super().__init__()
        self.region = region
        self.embed = nn.Linear(8, d)
        self.t_embed = nn.Linear(1, d)
        self.blocks = nn.ModuleList([StateBlock(d, region) for _ in range(n)])
        self.out = nn.Linear(d, 8)

    def forward(self, hidden_states, timestep):
        if self.region == "autocast_before":
            with torch.autocast("cpu", enabled=False):
                temb = self.t_embed(timestep[:, None].float() / 1000)
        else:
            temb = self.t_embed(timestep[:, None] / 1000)
        h = self.embed(hidden_states)
        if self.region == "autocast_loop":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                for block in self.blocks:
                    h = block(h, temb)
            h = h.float()
        else:
            for block in self.blocks:
                h = block(h, temb)
        return self.out(h)


REGIONS = ["autocast_before", "autocast_block", "autocast_loop", "no_grad_block", "vmap_block"]
STEPS = 8


def build(region):
    torch.manual_seed(0)
    return StateDiT(region).eval()


def run(model, grad=False):
    with torch.set_grad_enabled(grad):
        return [model(**toy_inputs(s)).detach() for s in range(STEPS)]


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_threshold_zero_is_bit_equal(region, backend):
    ref = run(build(region), grad=region == "no_grad_block")
    m = dcp.compile(build(region), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                     residual_diff_threshold=0.0), backend=backend, strict=True)
    got = run(m, grad=region == "no_grad_block")
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert torch.is_autocast_enabled("cpu") is False and torch.is_grad_enabled()  # nothing leaked out


@pytest.mark.parametrize("region", REGIONS)
def test_cached_steps_equal_the_reference(region):
    assert_caches_like_the_reference(lambda: build(region), run, "blocks", 3)


def test_pieces_reenter_the_regions_they_cover():
    m = dcp.compile(build("autocast_loop"), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1),
                    backend="eager", strict=True)
    run(m)
    by_kind = {p.kind: p for p in m._dit_cachepass.graphs[0].pieces}
    for kind in ("Fn", "middle", "Bn"):
        targets = [getattr(n.target, "__name__", "") for n in by_kind[kind].gm.graph.nodes]
        assert targets.count("_enter_autocast") == targets.count("_exit_autocast") == 1, (kind, targets)


def test_regions_that_do_not_nest_are_refused():
    g = torch.fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.amp.autocast_mode._enter_autocast, ("cpu", None, False, None))
    b = g.call_function(torch.amp.autocast_mode._enter_autocast, ("cpu", None, True, None))
    g.call_function(torch.amp.autocast_mode._exit_autocast, (a,))  # exits the outer one first
    g.call_function(torch.amp.autocast_mode._exit_autocast, (b,))
    g.output(x)
    with pytest.raises(RegionError, match="not the innermost"):
        find_regions(g)
