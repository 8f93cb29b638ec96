import os
import sys

# Triton's CPU interpreter can only be switched on before triton is first imported (torch._dynamo
# imports it), so it is set here, ahead of every test module. CPU-only suite: harmless elsewhere.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))  # toy_models, reference_dbcache
