"""Two gloo ranks, each holding half of the tokens (as context parallelism shards them): with
the decision synchronized every rank takes the same cached steps, the gathered output equals
the single-process cached run, and nothing hangs. The toy DiT is per-token (no attention), so
sharding tokens is exact; rank 1's shard drifts faster, so its local diff alone would decide
differently (shown by the unsynchronized run)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import dit_cachepass as dcp
from toy_models import ToyDiT, sharded_inputs

HERE = os.path.dirname(__file__)
THRESHOLD = 0.03


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(sync, tmp_path):
    out = tmp_path / ("sync" if sync else "local")
    out.mkdir()
    subprocess.run([sys.executable, os.path.join(HERE, "dist_worker.py"), "sync" if sync else "local",
                    str(THRESHOLD), str(out), str(_free_port())], check=True, timeout=240)
    return json.loads((out / "cached.json").read_text()), torch.load(out / "out.pt")


def single_process():
    from dist_worker import STEPS, config

    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), config(THRESHOLD), backend="eager")
    with torch.no_grad():
        outs = [m(**sharded_inputs(s)) for s in range(STEPS)]
    return dcp.summary(m).cached_steps, torch.stack(outs)


@pytest.mark.timeout(300)
def test_ranks_follow_one_global_decision(tmp_path):
    ref_cached, ref_out = single_process()
    cached, out = run_ranks(True, tmp_path)
    assert cached[0] == cached[1] == ref_cached and ref_cached
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    local, _ = run_ranks(False, tmp_path)
    assert local[0] != local[1], "the ranks' local diffs should disagree here, or the test proves nothing"


def test_process_group_without_distributed_is_a_clear_error():
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        dcp.compile(ToyDiT(), dcp.DBCacheConfig(), process_group=True)
