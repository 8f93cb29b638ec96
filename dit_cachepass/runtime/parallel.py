"""Parallelism: shard a transformer with diffusers' own parallel config, and pick the ranks
whose cache decisions must agree.

Under context parallelism each rank's blocks see a slice of the sequence, so each rank's
local residual diff differs; the runner all-reduces the two L1 sums over the group chosen
here (the context-parallel mesh), so every rank takes the same branch and the ranks never
diverge into different collectives. Under tensor parallelism the activations between blocks
are replicated, so the ranks would agree anyway; syncing over the TP mesh costs one tiny
all-reduce and removes any doubt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..config import ParallelismConfig


def _diffusers_config(config: ParallelismConfig) -> Any:
    from diffusers import ContextParallelConfig, TensorParallelConfig

    if config.tensor_parallel:
        return TensorParallelConfig(tp_degree=config.tp_size)
    return ContextParallelConfig(ulysses_degree=config.ulysses_size, ring_degree=config.ring_size,
                                 ulysses_anything=config.ulysses_anything)


def enable_parallelism(module: torch.nn.Module, config: Any) -> None:
    """Shard ``module`` with ``config``: our ``ParallelismConfig`` or diffusers' own
    ``ParallelConfig`` / ``ContextParallelConfig`` / ``TensorParallelConfig`` (passed through)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("parallelism_config needs torch.distributed: launch with torchrun and call "
                         "torch.distributed.init_process_group() before enable_cache.")
    if not hasattr(module, "enable_parallelism"):
        raise TypeError(f"parallelism_config needs a diffusers ModelMixin (with enable_parallelism); "
                        f"{type(module).__name__} has none.")
    if getattr(module, "_parallel_config", None) is not None:
        raise ValueError(f"{type(module).__name__} is already parallelized (enable_parallelism or "
                         "from_pretrained(parallel_config=...)); drop parallelism_config.")
    cp_plan = None
    if isinstance(config, ParallelismConfig):
        if config.world_size != dist.get_world_size():
            raise ValueError(f"{config!r} spans {config.world_size} ranks but the world has "
                             f"{dist.get_world_size()}: make the degrees multiply to the world size.")
        if config.attention_backend is not None:
            module.set_attention_backend(config.attention_backend)
        cp_plan = config.cp_plan
        config = _diffusers_config(config)
    module.enable_parallelism(config=config, cp_plan=cp_plan)


def decision_group(module: torch.nn.Module, process_group: Any) -> Any:
    """The group whose ranks share one sample (``None``: decide locally). ``process_group``:
    a group, ``True`` for the default group, ``False`` for local decisions, or ``None`` to
    follow the model's diffusers parallel config."""
    config = getattr(module, "_parallel_config", None)
    if process_group is False and getattr(config, "context_parallel_config", None) is not None:
        raise ValueError("process_group=False on a context-parallel model: each rank sees a different slice "
                         "of the sequence, so local decisions diverge and the ranks deadlock in the next "
                         "all-to-all. Leave process_group=None (the context-parallel mesh).")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if process_group not in (None, False):
            raise ValueError("process_group was given but torch.distributed is not initialized (or has one rank): "
                             "call torch.distributed.init_process_group first, or drop process_group.")
        return None
    if process_group is None:
        return _parallel_config_group(config)
    if process_group is True:
        return dist.group.WORLD
    return process_group or None


def _parallel_config_group(config: Any) -> Any:
    """The context-parallel mesh (ring x ulysses) or the tensor-parallel mesh of diffusers'
    ``ParallelConfig``; ranks outside it (data parallel) decide on their own samples."""
    if config is None:
        return None
    cp = getattr(config, "context_parallel_config", None)
    mesh = getattr(cp, "_flattened_mesh", None) if cp is not None else None
    if mesh is None:
        tp = getattr(config, "tensor_parallel_config", None)
        mesh = getattr(tp, "_mesh", None) if tp is not None else None
    if mesh is None:
        return dist.group.WORLD
    return mesh.get_group()
