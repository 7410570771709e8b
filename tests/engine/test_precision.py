import torch

from bljust.engine import precision
from bljust.engine.precision import amp_dtype, autocast, grad_scaler, native_bf16

CPU = torch.device("cpu")


def test_autocast_computes_in_bf16_only_where_the_device_has_it_natively():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(CPU, True):
        y = lin(x)
    # Emulated bf16 is slower than float32, so a CPU without AVX512-BF16 or AMX stays in float32.
    assert y.dtype == (torch.bfloat16 if native_bf16(CPU) else torch.float32)
    with autocast(CPU, False):
        assert lin(x).dtype == torch.float32
    assert not native_bf16(torch.device("meta"))


def test_a_gpu_without_bf16_trains_in_fp16_with_a_gradient_scaler(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype(cuda, True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(cuda, True) == torch.float16
    assert amp_dtype(cuda, False) is None and amp_dtype(cuda, True, "bf16") == torch.bfloat16


def test_fp16_forced_on_the_cpu_autocasts_and_scales(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_bf16", lambda: False)
    assert amp_dtype(CPU, True) is None and grad_scaler(CPU, True) is None  # float32: no scaler
    lin = torch.nn.Linear(4, 4)
    with autocast(CPU, True, "fp16"):
        assert lin(torch.randn(2, 4)).dtype == torch.float16
    scaler = grad_scaler(CPU, True, "fp16")
    assert scaler is not None and scaler.get_scale() > 1
