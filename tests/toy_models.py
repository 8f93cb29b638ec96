"""Small hand-written DiT-shaped models for the glue cases real models have (not mocks
of diffusers classes: these exercise loop shapes no tiny diffusers config produces)."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.mod = nn.Linear(d, d)
        self.skip_linear = nn.Linear(2 * d, d)

    def forward(self, hidden_states, temb, skip=None):
        if skip is not None:  # HunyuanDiT-style long skip passed into the block
            hidden_states = self.skip_linear(torch.cat([hidden_states, skip], dim=-1))
        return hidden_states + self.ff(self.norm(hidden_states) * (1 + self.mod(temb)[:, None]))


class ToyDiT(nn.Module):
    """``glue``: "none", "control" (hint added after blocks 2 and 4), "perceiver" (a small
    auxiliary list applied after every block), "skip" (long skips added between blocks,
    U-ViT style), "skip_arg" (long skips passed into the second-half blocks, HunyuanDiT style)."""

    def __init__(self, d=32, n=6, glue="none", item_break=False):
        super().__init__()
        self.glue, self.item_break = glue, item_break
        self.embed = nn.Linear(8, d)
        self.t_embed = nn.Linear(1, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(n)])
        self.perceiver = nn.ModuleList([nn.Linear(d, d) for _ in range(n)]) if glue == "perceiver" else None
        self.hint = nn.Linear(8, d) if glue == "control" else None
        self.out = nn.Linear(d, 8)

    def forward(self, hidden_states, timestep):
        temb = self.t_embed(timestep[:, None] / 1000)
        h = self.embed(hidden_states)
        skips = []
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            if self.glue == "skip" and i >= n // 2:
                h = h + 0.5 * skips.pop()
            if self.glue == "skip_arg" and i >= n // 2:
                h = block(h, temb, skip=skips.pop())
            else:
                h = block(h, temb)
            if self.item_break and float(h.sum()) > 1e9:  # graph break inside the loop
                h = h * 0
            if self.glue in ("skip", "skip_arg") and i < n // 2:
                skips.append(h)
            if self.glue == "control" and i in (2, 4):
                h = h + 0.1 * self.hint(hidden_states)
            if self.glue == "perceiver":
                h = h + 0.1 * torch.tanh(self.perceiver[i](h))
        return self.out(h)


class NoLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, hidden_states, timestep):
        return self.b(torch.relu(self.a(hidden_states))) * timestep[:, None, None]


def toy_inputs(step, batch=2, tokens=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, tokens, 8, generator=g)
    return dict(hidden_states=x0 * (1 + 0.01 * step), timestep=torch.full((batch,), 1000.0 - 50 * step))


def sharded_inputs(step, rank=None, world=2, tokens=16):
    """toy_inputs where the second half of the tokens drifts faster; ``rank`` selects that
    rank's token shard (None: all tokens), as context parallelism would shard them."""
    x = toy_inputs(step, tokens=tokens)
    g = torch.Generator().manual_seed(1)
    h = x["hidden_states"].clone()
    h[:, tokens // 2:] += 0.02 * step * torch.randn(h[:, tokens // 2:].shape, generator=g)
    if rank is not None:
        n = tokens // world
        h = h[:, rank * n:(rank + 1) * n]
    return dict(hidden_states=h, timestep=x["timestep"])
