"""dit_cachepass: cache diffusion-transformer block work across denoising steps, as a
torch.compile graph pass.

    import dit_cachepass as dcp
    pipe.transformer = dcp.compile(pipe.transformer, dcp.DBCacheConfig(Fn_compute_blocks=8))
    print(dcp.summary(pipe.transformer))
"""

from .api import (ExplainReport, LoopReport, branch, compile, disable, disable_cache, enable_cache, explain,
                  generation, refresh, summary)
from .compiler.flops import count_flops
from .config import (CalibratorConfig, DBCacheConfig, DBPruneConfig, DMDCalibratorConfig, FBCacheConfig,
                     FoCaCalibratorConfig, ParallelismConfig, ParamsModifier, TaylorSeerCalibratorConfig)
from .compiler.patterns import ForwardPattern
from .runtime.calls import ConcurrentCallError
from .runtime.session import UnsupportedModelError
from .compiler.lower import CompileOptions
from .stats import Summary
from .tune import TuneReport, tune

__version__ = "0.1.0"
__all__ = [
    "DBCacheConfig", "DBPruneConfig", "FBCacheConfig", "TaylorSeerCalibratorConfig", "FoCaCalibratorConfig",
    "DMDCalibratorConfig",
    "CalibratorConfig", "ParamsModifier", "ParallelismConfig", "ForwardPattern",
    "enable_cache", "disable_cache",
    "compile", "disable", "refresh", "summary", "generation", "branch", "explain", "ExplainReport", "LoopReport",
    "Summary", "UnsupportedModelError", "ConcurrentCallError", "count_flops", "tune", "TuneReport", "CompileOptions",
]
