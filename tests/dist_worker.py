"""Run by tests/test_distributed.py: 2 gloo ranks on CPU, ``dist_worker.py OUT PORT RUN...``.

The runs go one after the other in the same two ranks (a launch costs three imports of torch and
diffusers; only the ranks import dit_cachepass and diffusers, the launching process just spawns
them). Each RUN writes to OUT/RUN:

  ``toy:sync:THRESHOLD`` / ``toy:local:THRESHOLD``: the per-token toy, each rank holding half of
  the tokens, with the decision synchronized across ranks or left local;
  ``MODEL:KIND:BACKEND:ALGO:THRESHOLD``: a tiny real zoo model sharded by diffusers' own
  ``enable_parallelism`` through ``dcp.enable_cache(parallelism_config=...)`` (KIND ulysses or tp),
  cached with ALGO (dbcache, dbprune or taylorseer; see ``algorithm``).

Rank 0 writes the gathered outputs (out.pt), every rank's decisions (cached.json) and the shapes
of the cached residuals every rank holds (residual_shapes.json).
"""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 8


def config(threshold):
    import dit_cachepass as dcp

    return dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=threshold,
                             max_warmup_steps=1)


def algorithm(algo, threshold):
    """(cache_config, calibrator_config) for one of the algorithms whose state must agree across ranks."""
    import dit_cachepass as dcp

    kw = dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=threshold, max_warmup_steps=1)
    if algo == "dbprune":
        return dcp.DBPruneConfig(**kw), None
    calibrator = dcp.TaylorSeerCalibratorConfig(taylorseer_order=1) if algo == "taylorseer" else None
    return dcp.DBCacheConfig(**kw), calibrator


def decisions(m):
    """Per loop and step: which middles (None) or blocks were skipped."""
    import dit_cachepass as dcp

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
    import dit_cachepass as dcp
    from toy_models import ToyDiT, sharded_inputs

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
    import dit_cachepass as dcp
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


def write(rank, world, out_dir, m, outs, cached):
    """Rank 0 writes the gathered outputs, every rank's decisions and cached-residual shapes."""
    everyone = [None] * world
    dist.all_gather_object(everyone, cached)
    shapes = [None] * world  # of the cached residuals each rank holds
    dist.all_gather_object(shapes, sorted(residual_shapes(m)))
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "residual_shapes.json"), "w") as f:
            json.dump(shapes, f)
        torch.save(torch.stack(outs), os.path.join(out_dir, "out.pt"))
        with open(os.path.join(out_dir, "cached.json"), "w") as f:
            json.dump(everyone, f)


def worker(rank, world, out_dir, port, runs):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import dit_cachepass as dcp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    for run in runs:
        *what, threshold = run.split(":")
        if what[0] == "toy":
            m, outs = toy_run(rank, world, what[1] == "sync", float(threshold))
            cached = dcp.summary(m).cached_steps
        else:
            model, kind, backend, algo = what
            m, outs = diffusers_run(kind, float(threshold), backend, algo, model)
            cached = decisions(m)
        write(rank, world, os.path.join(out_dir, run), m, outs, cached)
        dist.barrier()
    dist.destroy_process_group()
    # Everything is written. About 1 run in 12, a rank then aborts in interpreter teardown
    # ("terminate called without an active exception", SIGABRT) inside gloo's threads (seen with
    # torch 2.13, before this change too); skip that teardown.
    os._exit(0)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("port", type=int)
    p.add_argument("runs", nargs="+", help="toy:sync|local:THRESHOLD or MODEL:KIND:BACKEND:ALGO:THRESHOLD")
    a = p.parse_args()
    mp.spawn(worker, args=(2, a.out_dir, a.port, a.runs), nprocs=2)
