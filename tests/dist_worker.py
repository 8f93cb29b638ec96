"""Run by tests/test_distributed.py: 2 gloo ranks, each holding half of the tokens."""

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


def worker(rank, world, sync, threshold, out_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), config(threshold), backend="eager", process_group=True if sync else None)
    outs = []
    with torch.no_grad():
        for s in range(STEPS):
            local = m(**sharded_inputs(s, rank, world))
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local)
            outs.append(torch.cat(parts, dim=1))
    cached = [None] * world
    dist.all_gather_object(cached, dcp.summary(m).cached_steps)
    if rank == 0:
        torch.save(torch.stack(outs), os.path.join(out_dir, "out.pt"))
        with open(os.path.join(out_dir, "cached.json"), "w") as f:
            json.dump(cached, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    sync, threshold, out_dir, port = sys.argv[1] == "sync", float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    mp.spawn(worker, args=(2, sync, threshold, out_dir, port), nprocs=2)
