"""Two gloo ranks on CPU.

Toy: each rank holds half of the tokens (as context parallelism shards them). With the decision
synchronized every rank takes the same cached steps, the gathered output equals the
single-process cached run, and nothing hangs. The toy DiT is per-token (no attention), so
sharding tokens is exact; rank 1's shard drifts faster, so its local diff alone would decide
differently (shown by the unsynchronized run).

Real diffusers FLUX (tiny, random weights) sharded by diffusers' own ``enable_parallelism``,
Ulysses context parallelism and tensor parallelism: every rank takes the cached steps of the
single-process run, and the output equals it. Random weights give first-block diffs of about
0.04-0.15 per step with the zoo's slowly varying inputs; the threshold 0.12 caches about half.
"""

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


DIFFUSERS_THRESHOLD = 0.12
DIFFUSERS_RUNS = [
    ("flux", "ulysses", "aot_eager", "dbcache"), ("flux", "ulysses", "eager", "dbprune"),
    ("flux", "ulysses", "eager", "taylorseer"), ("flux", "tp", "eager", "dbcache"),
    ("qwenimage", "ulysses", "eager", "dbcache"),  # its plan splits at block 0's own hook
]
RUNS = [f"toy:sync:{THRESHOLD}", f"toy:local:{THRESHOLD}"] + [
    ":".join((*r, str(DIFFUSERS_THRESHOLD))) for r in DIFFUSERS_RUNS]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every run of this file in one launch of two ranks (each launch imports torch and diffusers
    three times, ~10 s on two cores): per run, every rank's decisions, rank 0's gathered outputs
    and every rank's cached-residual shapes."""
    out = tmp_path_factory.mktemp("ranks")
    subprocess.run([sys.executable, os.path.join(HERE, "dist_worker.py"), str(out), str(_free_port()), *RUNS],
                   check=True, timeout=420)  # a hang fails fast

    def result(run):
        d = out / run
        return (json.loads((d / "cached.json").read_text()), torch.load(d / "out.pt"),
                json.loads((d / "residual_shapes.json").read_text()))
    return {run: result(run) for run in RUNS}


def single_process():
    from dist_worker import STEPS, config

    torch.manual_seed(0)
    m = dcp.compile(ToyDiT().eval(), config(THRESHOLD), backend="eager")
    with torch.no_grad():
        outs = [m(**sharded_inputs(s)) for s in range(STEPS)]
    return dcp.summary(m).cached_steps, torch.stack(outs)


@pytest.mark.timeout(480)  # the first test of the file waits for every run (``ranks``)
def test_ranks_follow_one_global_decision(ranks):
    ref_cached, ref_out = single_process()
    cached, out, _ = ranks[f"toy:sync:{THRESHOLD}"]
    assert cached[0] == cached[1] == ref_cached and ref_cached
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    local, _, _ = ranks[f"toy:local:{THRESHOLD}"]
    assert local[0] != local[1], "the ranks' local diffs should disagree here, or the test proves nothing"


def test_process_group_without_distributed_is_a_clear_error():
    with pytest.raises(ValueError, match="torch.distributed is not initialized"):
        dcp.compile(ToyDiT(), dcp.DBCacheConfig(), process_group=True)


@pytest.mark.timeout(480)
@pytest.mark.parametrize("model,kind,backend,algo", DIFFUSERS_RUNS)
def test_diffusers_parallel_model_takes_the_single_process_decisions(ranks, model, kind, backend, algo):
    """Same skipped middles (DBCache, TaylorSeer) or blocks (DBPrune) on both ranks as in one
    process, and the same output: the forecasts stay consistent across shards too."""
    from dist_worker import STEPS, algorithm, decisions, residual_shapes
    from dit_cachepass.testing.zoo import ZOO

    e = ZOO[model]
    cache, calibrator = algorithm(algo, DIFFUSERS_THRESHOLD)
    ref = dcp.compile(e.build(), cache, calibrator_config=calibrator, backend="eager")
    with torch.no_grad():
        ref_out = torch.stack([ref(**e.inputs(s, STEPS, 1.0), return_dict=False)[0] for s in range(STEPS)])
    ref_decisions = decisions(ref)
    skipped = sum(bool(s) for loop in ref_decisions for _, s in loop)
    assert 0 < skipped < STEPS - 1, ref_decisions
    got, out, rank_shapes = ranks[":".join((model, kind, backend, algo, str(DIFFUSERS_THRESHOLD)))]
    assert got[0] == got[1] == ref_decisions
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    # cached residuals are laid out like the activations they replace: a sequence shard per rank
    # under context parallelism, the whole (replicated) activation under tensor parallelism
    full = residual_shapes(ref)
    shard = {(b, n // 2, c) for b, n, c in full}
    for shapes in rank_shapes:
        assert {tuple(x) for x in shapes} == (shard if kind == "ulysses" else full)


def test_parallelism_config_without_distributed_is_a_clear_error():
    from dit_cachepass.testing.zoo import ZOO

    with pytest.raises(ValueError, match="needs torch.distributed.*torchrun"):
        dcp.enable_cache(ZOO["flux"].build(), dcp.DBCacheConfig(), parallelism_config=dcp.ParallelismConfig(ulysses_size=2))


def test_local_decisions_on_a_context_parallel_model_are_refused():
    """They would diverge per rank and deadlock the next all-to-all (seen with 2 ranks)."""
    from diffusers import ContextParallelConfig, ParallelConfig
    from dit_cachepass.testing.zoo import ZOO

    m = ZOO["flux"].build()
    m._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    with pytest.raises(ValueError, match="deadlock"):
        dcp.compile(m, dcp.DBCacheConfig(), process_group=False)
