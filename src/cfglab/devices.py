"""Which device a job runs on: `device: auto | cpu | cuda | cuda:N` in the evaluate and generate configs."""

from __future__ import annotations

import torch


def cuda_unavailable_reason() -> str:
    """Why torch sees no CUDA device, pointing at the likely fix."""
    if torch.version.cuda is None:
        return (f"the installed torch {torch.__version__} is a CPU-only build: install the torch build that matches "
                "your CUDA driver first (https://pytorch.org/get-started/locally/), then cfglab")
    return f"no CUDA device is visible to torch {torch.__version__} (CUDA {torch.version.cuda}): check the driver " \
           "and CUDA_VISIBLE_DEVICES, or use the CPU"


def resolve_device(name: str) -> torch.device:
    """'auto' is the first CUDA device when there is one, else the CPU; 'cuda' needs a visible CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={name!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: {cuda_unavailable_reason()}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
