import pytest

import os
import sys

# Triton's CPU interpreter can only be switched on before triton is first imported (torch._dynamo
# imports it), so it is set here, ahead of every test module. CPU-only suite: harmless elsewhere.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))  # toy_models, reference_dbcache


@pytest.fixture(scope="module")
def one_thread():
    """Small trained models' forwards: one thread beats two oversubscribed cores (``-n 2`` runs
    two test processes). A module opts in with an autouse fixture that requests it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
