"""The one reading of a ``device`` setting: spellings, and errors that name the setting at fault."""

import pytest
import torch

from voszoo.device import DeviceError, resolve_device
from voszoo.errors import UserError


def test_resolve_device_spellings() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_errors_name_the_setting() -> None:
    with pytest.raises(
        DeviceError, match=r"^trainer\.device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'gpu0'"
    ):
        resolve_device("gpu0", key="trainer.device")
    with pytest.raises(DeviceError, match="^device must be a CPU or CUDA device, got 'meta'"):
        resolve_device("meta")
    assert issubclass(DeviceError, UserError) and issubclass(DeviceError, ValueError)  # the CLIs print one line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_refuses_cuda_without_cuda() -> None:
    with pytest.raises(DeviceError, match=r"^--device='cuda:1' requested but CUDA is not available; use --device=cpu"):
        resolve_device("cuda:1", key="--device")
