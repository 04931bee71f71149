"""The one device parse (flexidit_trt/device.py) and the stages that read a device through it."""

from __future__ import annotations

import pytest
import torch

from flexidit_trt.device import Device, is_cuda
from flexidit_trt.evaluation.distributed import pick_device
from flexidit_trt.evaluation.options import OptionsError
from flexidit_trt.model.levers import gelu_epilogue_default
from flexidit_trt.training.loop import TrainError, resolve_device


def test_parse_and_spelling():
    assert [str(Device.parse(d)) for d in ("cpu", "cuda", "cuda:3")] == ["cpu", "cuda:0", "cuda:3"]
    assert [is_cuda(d) for d in ("cpu", "cuda", "cuda:1", torch.device("cpu"), torch.device("cuda", 2))] == [
        False,
        True,
        True,
        False,
        True,
    ]
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "mps"):
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            is_cuda(bad)


def test_stages_read_the_device_through_it():
    assert gelu_epilogue_default(torch.device("cuda", 1), "bf16") and not gelu_epilogue_default("cpu", "bf16")
    assert pick_device("cpu", 3) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(OptionsError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        pick_device("gpu", 0)
    with pytest.raises(TrainError, match="got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_bare_cuda_is_each_process_own_gpu():
    assert pick_device("cuda", 0) == torch.device("cuda:0") and pick_device("cuda:0", 1) == torch.device(
        "cuda:0"
    )
    assert resolve_device("cuda") == torch.device("cuda")
