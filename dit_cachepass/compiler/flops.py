"""FLOPs accounting for full models and for rewritten FX pieces.

Counting is delegated to :class:`torch.utils.flop_counter.FlopCounterMode` (no hand-written
per-layer formulas), always on the **meta** device: parameters, buffers and inputs are
replaced by meta tensors of the same shape/dtype/stride, so counting a full-size model
(FLUX.1-dev, 12B parameters) needs no memory and no compute.

Convention (that of ``FlopCounterMode``, and of published DiT-caching tables):

* a multiply-add counts as **2 FLOPs** (``mm``: ``2*M*N*K``);
* only matmul-like ops are counted: ``mm/addmm/bmm/baddbmm``, convolutions and
  attention (``4*B*H*Lq*Lk*D`` for QK^T plus PV). Element-wise work (norms,
  activations, softmax, bias adds, RoPE) is **not** counted; for DiTs it is < 0.3 %.
* one call = one forward; a sampler's total is ``steps * count_flops(...)`` (times 2
  for models run with classifier-free guidance as two batches; FLUX.1-dev is
  guidance-distilled so one forward per step). ``TFLOPs`` below means ``1e12`` FLOPs.

With this convention FLUX.1-dev at 1024x1024 (4096 image + 512 text tokens) measures
74.385 TFLOPs per forward, i.e. 3719.2 TFLOPs for 50 steps versus 3726.87 published by
cache-dit (-0.21 %). cache-dit's figure comes from ``calflops`` hooked on every transformer
forward and summed over the 50 steps (bench/utils.py ``apply_flops_hook``); calflops also
uses 2 FLOPs per MAC and additionally counts some element-wise ops, which is the residual.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_flops", "count_graph_flops", "flop_counter", "to_tflops", "to_meta"]

aten = torch.ops.aten

# SDPA dispatch paths that the stock FlopCounterMode registry misses. On meta (what we
# run on) `F.scaled_dot_product_attention` -- which diffusers' "native" attention backend
# calls -- takes the math path and decomposes into `bmm`s, which *are* counted. On real
# CPU tensors it instead lowers to `_scaled_dot_product_flash_attention_for_cpu`, which
# has no formula in torch's registry and would silently count as 0; map it to the same
# formula as the CUDA flash/efficient/cudnn kernels so a real-device call agrees too.
def _sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
               out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {}
if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_flop


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` with the extra SDPA formulas above registered."""
    return FlopCounterMode(display=False, custom_mapping=dict(_EXTRA_FORMULAS))


def to_tflops(flops: int) -> float:
    """FLOPs -> TFLOPs (decimal, ``1e12``), the unit published tables use."""
    return flops / 1e12


def _concrete(x: Any) -> Any:
    """SymInt/SymFloat (from dynamic-shape fake inputs) -> its size hint."""
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        hint = x.node.hint
        if hint is None:
            raise ValueError(f"cannot count FLOPs for unbacked symbolic value {x}")
        return hint
    return x


def _meta_tensor(t: torch.Tensor) -> torch.Tensor:
    size = [_concrete(s) for s in t.size()]
    if t.layout != torch.strided:
        return torch.empty(size, dtype=t.dtype, device="meta")
    stride = [_concrete(s) for s in t.stride()]
    return torch.empty_strided(size, stride, dtype=t.dtype, device="meta")


def to_meta(tree: Any) -> Any:
    """Replace every tensor (real, fake or meta) in a pytree by a fresh meta tensor with
    the same shape/stride/dtype, and symbolic ints by their hints. Why: counting must
    never run real kernels, and fake tensors belong to another mode's ShapeEnv."""

    def conv(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return _meta_tensor(x)
        return _concrete(x)

    return pytree.tree_map(conv, tree)


def _meta_state(module: torch.nn.Module, extra_names: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Meta stand-ins for all parameters/buffers (plus extra tensor attributes) that are
    not already on meta; used with ``functional_call`` so real weights are never touched
    (and never copied)."""
    state: dict[str, torch.Tensor] = {}
    named = list(module.named_parameters(remove_duplicate=False))
    named += list(module.named_buffers(remove_duplicate=False))
    for name in extra_names:
        named.append((name, _get_attr(module, name)))
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            state[name] = _meta_tensor(t)
    return state


def _get_attr(module: torch.nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _run_counted(module: torch.nn.Module, args: tuple, kwargs: dict,
                 extra_names: Sequence[str] = ()) -> int:
    # Leave any ambient FakeTensorMode (e.g. when called from inside a dynamo backend):
    # our meta tensors are plain tensors and must not be intercepted by it.
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        args, kwargs = to_meta((tuple(args), dict(kwargs)))
        state = _meta_state(module, extra_names)
        counter = flop_counter()
        with torch.no_grad(), counter:
            if state:
                torch.func.functional_call(module, state, args, kwargs, tie_weights=True, strict=False)
            else:
                module(*args, **kwargs)
        return int(counter.get_total_flops())


def count_flops(module: torch.nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one full ``module(*args, **kwargs)`` forward (2 FLOPs per multiply-add).

    Runs on meta: build the model under ``torch.device("meta")`` to avoid allocating it,
    or pass a real model -- its parameters/buffers are swapped for meta stand-ins via
    ``torch.func.functional_call`` (no copy), and real/fake inputs are converted to meta.
    A ``torch.compile`` wrapper is unwrapped (``_orig_mod``) so the eager, uncached
    forward is what gets counted.

    Attention: diffusers' default ("native") attention backend calls
    ``F.scaled_dot_product_attention``; on meta it decomposes into two ``bmm`` s that
    FlopCounterMode counts (``4*B*H*Lq*Lk*D``). Third-party kernels chosen via
    ``set_attention_backend`` (flash-attn, sage, xformers...) are opaque custom ops that
    have no meta kernel or flop formula; count such models with the native backend.
    Models with data-dependent Python control flow (``.item()``) cannot run on meta.
    """
    module = getattr(module, "_orig_mod", module)
    return _run_counted(module, args, kwargs)


def count_graph_flops(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> int:
    """FLOPs of running ``gm(*example_inputs)`` once.

    Meant for the pieces a cache rewrite splits a captured graph into (pre / Fn / middle /
    Bn), so a summary can weigh executed against full FLOPs. ``example_inputs`` may be real,
    fake (dynamo backend inputs, symbolic sizes resolved to their hints) or meta tensors;
    all are converted to meta, as are the module's own parameters, buffers and tensor
    constants reached by ``get_attr``, so nothing is computed.
    """
    extra = []
    params_buffers = {n for n, _ in gm.named_parameters(remove_duplicate=False)}
    params_buffers |= {n for n, _ in gm.named_buffers(remove_duplicate=False)}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in params_buffers:
            if isinstance(_get_attr(gm, node.target), torch.Tensor):
                extra.append(node.target)
    return _run_counted(gm, tuple(example_inputs), {}, extra)
