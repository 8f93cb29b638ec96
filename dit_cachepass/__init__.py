"""dit_cachepass: cache diffusion-transformer block work across denoising steps, as a
torch.compile graph pass.

    import dit_cachepass as dcp
    pipe.transformer = dcp.compile(pipe.transformer, dcp.DBCacheConfig(Fn_compute_blocks=8))
    print(dcp.summary(pipe.transformer))
"""



def _hide_checkout_kernels() -> None:
    """From a checkout, the repository's ``kernels/`` folder (installed as
    ``dit_cachepass.kernels``) is also importable as a top-level ``kernels``, and transformers
    imports whatever ``kernels`` it finds to read its version (it probes for HF's ``kernels``
    package): our custom ops would register a second time, from a second copy of the module.
    That name is marked absent when it resolves to this folder, and only then."""
    import importlib.util
    import os
    import sys

    if "kernels" in sys.modules:
        return
    try:
        spec = importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return
    ours = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels", "__init__.py")
    if spec is not None and spec.origin and os.path.abspath(spec.origin) == ours:
        sys.modules["kernels"] = None  # type: ignore[assignment]


_hide_checkout_kernels()

from .api import (ExplainReport, LoopReport, branch, compile, disable, disable_cache, enable_cache, explain,
                  generation, refresh, summary)
from .flops import count_flops
from .config import (CalibratorConfig, DBCacheConfig, DBPruneConfig, FBCacheConfig, FoCaCalibratorConfig,
                     ParallelismConfig, ParamsModifier, TaylorSeerCalibratorConfig)
from .patterns import ForwardPattern
from .session import ConcurrentCallError, UnsupportedModelError
from .lower import CompileOptions
from .stats import Summary
from .tune import TuneReport, tune

__version__ = "0.1.0"
__all__ = [
    "DBCacheConfig", "DBPruneConfig", "FBCacheConfig", "TaylorSeerCalibratorConfig", "FoCaCalibratorConfig",
    "CalibratorConfig", "ParamsModifier", "ParallelismConfig", "ForwardPattern",
    "enable_cache", "disable_cache",
    "compile", "disable", "refresh", "summary", "generation", "branch", "explain", "ExplainReport", "LoopReport",
    "Summary", "UnsupportedModelError", "ConcurrentCallError", "count_flops", "tune", "TuneReport", "CompileOptions",
]
