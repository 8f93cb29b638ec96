"""Run by tests/test_distributed.py: 2 gloo ranks on CPU.

``toy sync|local THRESHOLD OUT PORT``: the per-token toy, each rank holding half of the tokens.
``diffusers ulysses|tp THRESHOLD OUT PORT [--backend B] [--algo A] [--model M]``: a tiny real zoo
model sharded by diffusers' own ``enable_parallelism`` through
``dcp.enable_cache(parallelism_config=...)``, cached with A (dbcache, dbprune or taylorseer; see
``algorithm``).
Rank 0 writes the gathered outputs (out.pt) and every rank's decisions (cached.json).
"""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))

import dit_cachepass as dcp  # noqa: E402
from toy_models import ToyDiT, sharded_inputs  # noqa: E402

STEPS = 8


def config(threshold):
    return dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=threshold,
                             max_warmup_steps=1)


def algorithm(algo, threshold):
    """(cache_config, calibrator_config) for one of the algorithms whose state must agree across ranks."""
    kw = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=threshold, max_warmup_steps=1)
    if algo == "dbprune":
        return dcp.DBPruneConfig(**kw), None
    calibrator = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1) if algo == "taylorseer" else None
    return dcp.DBCacheConfig(**kw), calibrator


def decisions(m):
    """Per loop and step: which middles (None) or blocks were skipped."""
    return [[[r.step, sorted(map(str, r.skipped))] for r in loop.steps] for loop in dcp.summary(m).loops]


def residual_shapes(m):
    """The shapes of every cached residual the model holds."""
    return {tuple(r.shape) for st in m._dit_cachepass.states.values() for b in st.buffers.values()
            for r in b.residuals}


def allow_diffusers_parallelism_on_cpu():
    """diffusers 0.42.1 assumes an accelerator: it places rank r on device ``r % device_count()``
    (0 on a CPU-only build: ZeroDivisionError) and refuses tensor parallelism on a "cpu" mesh.
    Both are placement checks; gloo and DTensor run the same collectives on CPU."""
    import diffusers.hooks.tensor_parallel as tp

    torch.accelerator.device_count = lambda: 1
    if "cpu" not in tp._SUPPORTED_TP_DEVICES:
        tp._SUPPORTED_TP_DEVICES = (*tp._SUPPORTED_TP_DEVICES, "cpu")


def toy_run(rank, world, sync, threshold):
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), config(threshold), backend="eager", process_group=True if sync else None)
    outs = []
    with torch.no_grad():
        for s in range(STEPS):
            local = m(**sharded_inputs(s, rank, world))
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local)
            outs.append(torch.cat(parts, dim=1))
    return m, outs


def diffusers_run(kind, threshold, backend, algo, model):
    from dit_cachepass.testing.zoo import ZOO

    allow_diffusers_parallelism_on_cpu()
    e = ZOO[model]
    par = dcp.ParallelismConfig(ulysses_size=2) if kind == "ulysses" else dcp.ParallelismConfig(tp_size=2)
    cache, calibrator = algorithm(algo, threshold)
    m = dcp.enable_cache(e.build(), cache, calibrator_config=calibrator, parallelism_config=par, backend=backend,
                         strict=True)
    with torch.no_grad():  # diffusers gathers the sequence at proj_out: every rank returns the whole output
        outs = [m(**e.inputs(s, STEPS, 1.0), return_dict=False)[0] for s in range(STEPS)]
    return m, outs


def worker(rank, world, mode, kind, threshold, out_dir, port, backend, algo, model):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    if mode == "toy":
        m, outs = toy_run(rank, world, kind == "sync", threshold)
    else:
        m, outs = diffusers_run(kind, threshold, backend, algo, model)
    cached = [None] * world
    dist.all_gather_object(cached, dcp.summary(m).cached_steps if mode == "toy" else decisions(m))
    shapes = [None] * world  # of the cached residuals each rank holds
    dist.all_gather_object(shapes, sorted(residual_shapes(m)))
    if rank == 0:
        with open(os.path.join(out_dir, "residual_shapes.json"), "w") as f:
            json.dump(shapes, f)
        torch.save(torch.stack(outs), os.path.join(out_dir, "out.pt"))
        with open(os.path.join(out_dir, "cached.json"), "w") as f:
            json.dump(cached, f)
    dist.barrier()
    dist.destroy_process_group()
    # Everything is written. About 1 run in 12, a rank then aborts in interpreter teardown
    # ("terminate called without an active exception", SIGABRT) inside gloo's threads (seen with
    # torch 2.13, before this change too); skip that teardown.
    os._exit(0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["toy", "diffusers"])
    p.add_argument("kind", choices=["sync", "local", "ulysses", "tp"])
    p.add_argument("threshold", type=float)
    p.add_argument("out_dir")
    p.add_argument("port", type=int)
    p.add_argument("--backend", default="eager")
    p.add_argument("--algo", default="dbcache", choices=["dbcache", "dbprune", "taylorseer"])
    p.add_argument("--model", default="flux")
    a = p.parse_args()
    mp.spawn(worker, args=(2, a.mode, a.kind, a.threshold, a.out_dir, a.port, a.backend, a.algo, a.model), nprocs=2)
