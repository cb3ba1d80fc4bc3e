from __future__ import annotations

import pytest
import torch

from custom_nets.precision import autocast_dtype, cpu_has_native_bf16


def test_cpu_choice_follows_the_instructions():
    assert autocast_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else None)
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        assert not cpu_has_native_bf16()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_always_autocasts():
    assert autocast_dtype("cuda") in (torch.bfloat16, torch.float16)
