"""A torchao-quantized transformer is captured, matched and cached like any other."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO

torchao = pytest.importorskip("torchao.quantization", reason="torchao is in the test extras")


def quantized(name):
    m = ZOO[name].build()
    torchao.quantize_(m, torchao.Int8WeightOnlyConfig())
    return m


@pytest.mark.parametrize("name", ["flux", "wan"])
def test_int8_weight_only_threshold_zero_equals_quantized_model(name):
    e = ZOO[name]
    ref = quantized(name)
    assert "Int8" in type(ref.proj_out.weight).__name__  # really quantized
    m = dcp.compile(quantized(name), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                       residual_diff_threshold=0.0), backend="aot_eager", strict=True)
    with torch.no_grad():
        for s in range(4):
            x = e.inputs(s, 4, 1.0)
            torch.testing.assert_close(m(**x, return_dict=False)[0], ref(**x, return_dict=False)[0], rtol=0, atol=0)


def test_int8_weight_only_takes_cached_steps():
    e = ZOO["flux"]
    m = dcp.compile(quantized("flux"), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                         residual_diff_threshold=0.3, max_warmup_steps=1),
                    backend="eager", strict=True)
    with torch.no_grad():
        for s in range(6):
            m(**e.inputs(s, 6, 1.0), return_dict=False)
    assert dcp.summary(m).cached_steps
