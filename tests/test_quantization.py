"""A torchao-quantized transformer is captured, matched and cached like any other: weight-only
int8 and float8, and int8 dynamic activations (the ones torchao runs on CPU; float8 dynamic
activations need compute capability >= 8.9, int4 needs the mslk package)."""

import pytest
import torch

import dit_cachepass as dcp
from dit_cachepass.testing.zoo import ZOO

torchao = pytest.importorskip("torchao.quantization", reason="torchao is in the test extras")

QUANT = {"int8wo": "Int8WeightOnlyConfig", "int8dq": "Int8DynamicActivationInt8WeightConfig",
         "fp8wo": "Float8WeightOnlyConfig"}


def quantized(name, quant="int8wo"):
    m = ZOO[name].build()
    torchao.quantize_(m, getattr(torchao, QUANT[quant])())
    return m


@pytest.mark.parametrize("name,quant", [("flux", "int8wo"), ("wan", "int8wo"), ("flux", "int8dq"),
                                        ("flux", "fp8wo")])
def test_threshold_zero_equals_quantized_model(name, quant):
    e = ZOO[name]
    ref = quantized(name, quant)
    assert type(ref.proj_out.weight).__name__ != "Parameter"  # really quantized (Int8Tensor, Float8Tensor...)
    m = dcp.compile(quantized(name, quant), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                              residual_diff_threshold=0.0),
                    backend="aot_eager", strict=True)
    with torch.no_grad():
        for s in range(4):
            x = e.inputs(s, 4, 1.0)
            torch.testing.assert_close(m(**x, return_dict=False)[0], ref(**x, return_dict=False)[0], rtol=0, atol=0)


@pytest.mark.parametrize("quant", ["int8wo", "fp8wo"])
def test_quantized_model_takes_cached_steps(quant):
    e = ZOO["flux"]
    m = dcp.compile(quantized("flux", quant), dcp.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=1,
                                                                residual_diff_threshold=0.3, max_warmup_steps=1),
                    backend="eager", strict=True)
    with torch.no_grad():
        for s in range(6):
            m(**e.inputs(s, 6, 1.0), return_dict=False)
    assert dcp.summary(m).cached_steps
