"""An independent, deliberately plain DBCache for tests (shares no code with the pass).

Like cache-dit, it swaps a block ModuleList for a one-element list holding a wrapper that
runs Fn, decides, and runs the middle or adds the stored residual, then runs Bn. The
calling convention comes from cache-dit's pattern table (given by the test), not from the
graph, so it checks the pass's own stream analysis.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class _Wrapper(nn.Module):
    def __init__(self, ref: "ReferenceDBCache"):
        super().__init__()
        self.__dict__["ref"] = ref  # not a submodule: keep the blocks out of this module

    def forward(self, *args, **kwargs):
        return self.ref.run(args, kwargs)


class ReferenceDBCache:
    def __init__(self, model: nn.Module, list_name: str, pattern: int, F: int, B: int,
                 threshold: float, warmup: int):
        self.blocks = getattr(model, list_name)
        self.pattern, self.F, self.B, self.threshold, self.warmup = pattern, F, B, threshold, warmup
        self.step = 0
        self.cached_steps: list[int] = []
        self.diffs: list[float] = []
        self.prev_fn_residual = None
        self.res_h = self.res_e = None
        setattr(model, list_name, nn.ModuleList([_Wrapper(self)]))
        self.sig = inspect.signature(self.blocks[0].forward)
        self.names = list(self.sig.parameters)

    def _call(self, i: int, bound: inspect.BoundArguments, h, e):
        bound.arguments[self.names[0]] = h
        if self.pattern in (0, 1, 2) and e is not None:
            bound.arguments[self.names[1]] = e
        out = self.blocks[i](*bound.args, **bound.kwargs)
        if isinstance(out, torch.Tensor):
            return out, e
        if self.pattern == 0:
            return out[0], out[1]
        if self.pattern == 1:
            return out[1], out[0]
        return out[0], e

    def _streams(self, args, kwargs):
        """The loop's call arguments, and the hidden / encoder streams in them."""
        bound = self.sig.bind(*args, **kwargs)
        e = bound.arguments.get(self.names[1]) if self.pattern in (0, 1, 2) else None
        return bound, bound.arguments[self.names[0]], e

    def _result(self, h, e):
        """What the loop's single wrapper returns: the last block's output, in pattern order."""
        if self.pattern == 0:
            return h, e
        if self.pattern == 1:
            return e, h
        return h

    def run(self, args, kwargs):
        bound, h, e = self._streams(args, kwargs)
        n = len(self.blocks)
        h0 = h
        for i in range(self.F):
            h, e = self._call(i, bound, h, e)
        r = (h - h0).double()
        cache = False
        if self.step >= self.warmup and self.prev_fn_residual is not None and self.threshold > 0:
            prev = self.prev_fn_residual
            diff = ((r - prev).abs().mean() / prev.abs().mean()).item()
            self.diffs.append(diff)
            cache = diff < self.threshold
        if cache:
            self.cached_steps.append(self.step)
            h = h + self.res_h
            if e is not None and self.res_e is not None:
                e = e + self.res_e
        else:
            self.prev_fn_residual = r
            hm, em = h, e
            for i in range(self.F, n - self.B):
                hm, em = self._call(i, bound, hm, em)
            self.res_h = hm - h
            self.res_e = em - e if (e is not None and em is not None) else None
            h, e = hm, em
        for i in range(n - self.B, n):
            h, e = self._call(i, bound, h, e)
        self.step += 1
        return self._result(h, e)



def reference_at_median(build, run, list_name: str, pattern: int, F: int, B: int, warmup: int):
    """The reference run at a threshold set to the median diff it measures on a probe run
    (so both cached and computed steps occur): returns (threshold, reference, outputs).
    ``build()`` gives a fresh model, ``run(model)`` the outputs of one generation."""
    import statistics

    probe_model = build()
    probe = ReferenceDBCache(probe_model, list_name, pattern, F, B, 1e-9, warmup)
    run(probe_model)
    threshold = statistics.median(probe.diffs) * 1.01
    model = build()
    ref = ReferenceDBCache(model, list_name, pattern, F, B, threshold, warmup)
    return threshold, ref, run(model)


def assert_caches_like_the_reference(build, run, list_name: str, pattern: int, F: int = 1, B: int = 1,
                                     warmup: int = 1, tol: float = 1e-5, **compile_kwargs):
    """``dcp.compile`` (eager, strict) at the reference's median threshold caches the same steps
    as the reference, with the same outputs; both cached and computed steps occur. Returns the
    compiled model."""
    import torch

    import dit_cachepass as dcp

    threshold, ref, expected = reference_at_median(build, run, list_name, pattern, F, B, warmup)
    m = dcp.compile(build(), dcp.DBCacheConfig(Fn_compute_blocks=F, Bn_compute_blocks=B,
                                               residual_diff_threshold=threshold, max_warmup_steps=warmup),
                    backend="eager", strict=True, **compile_kwargs)
    got = run(m)
    assert 0 < len(ref.cached_steps) < len(expected) - warmup, ref.diffs
    assert dcp.summary(m).loops[0].cached_steps == ref.cached_steps
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    return m

class ReferenceDBPrune(ReferenceDBCache):
    """Plain DBPrune: every block outside the first F / last B decides on its own input's
    relative L1 change since its last computed call (no limits, static threshold)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pruned_per_step: list[int] = []
        self.block_input: dict[int, torch.Tensor] = {}
        self.block_res: dict[int, tuple] = {}

    def run(self, args, kwargs):
        bound, h, e = self._streams(args, kwargs)
        n, pruned = len(self.blocks), 0
        for i in range(n):
            if i < self.F or i >= n - self.B:
                h, e = self._call(i, bound, h, e)
                continue
            prev = self.block_input.get(i)
            if self.step >= self.warmup and prev is not None and self.threshold > 0:
                x = h.double()
                diff = ((x - prev).abs().mean() / prev.abs().mean()).item()
                if diff < self.threshold:
                    rh, re = self.block_res[i]
                    h = h + rh
                    e = e + re if (e is not None and re is not None) else e
                    pruned += 1
                    continue
            self.block_input[i] = h.double()
            h2, e2 = self._call(i, bound, h, e)
            self.block_res[i] = (h2 - h, e2 - e if (e is not None and e2 is not None) else None)
            h, e = h2, e2
        if pruned:
            self.cached_steps.append(self.step)
        self.pruned_per_step.append(pruned)
        self.step += 1
        return self._result(h, e)
