import torch

from bljust.training import autocast, native_bf16


def test_autocast_computes_in_bf16_only_where_the_device_has_it_natively():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    cpu = torch.device("cpu")
    with autocast(cpu, True):
        y = lin(x)
    # Emulated bf16 is slower than float32, so a CPU without AVX512-BF16 or AMX stays in float32.
    assert y.dtype == (torch.bfloat16 if native_bf16(cpu) else torch.float32)
    with autocast(cpu, False):
        assert lin(x).dtype == torch.float32
    assert native_bf16(torch.device("cuda")) and not native_bf16(torch.device("meta"))
