"""What the benchmark scripts share: the device they run on, how it is described, and how it is timed."""

from __future__ import annotations

import platform

import torch


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> dict:
    """The machine for the JSON line: the GPU's name on a GPU, else the processor and its thread count."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": device.type, "machine": name, "threads": torch.get_num_threads(), "torch": torch.__version__}
