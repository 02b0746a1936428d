"""Guided sampling as plain functions: every caller (the training sweep, the end-of-job grids, evaluate.py, the
benchmarks) samples through `sample` or, for a list of labels in seeded batches, `sample_batches`.

How samples are computed (clipping, precision, one 2B forward or two B forwards) is `SamplingSettings`, kept
apart from what is sampled (the network), how it is stepped (the sampler) and how it is guided (the guidance
method with its w).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from cfglab.diffusion.denoiser import GuidedDenoiser, ModelFn
from cfglab.diffusion.guidance import CFG, check_sampler_guidance
from cfglab.diffusion.samplers import Sampler
from cfglab.diffusion.schedules import Schedule
from cfglab.images import to_uint8

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}


@dataclass(frozen=True)
class SamplingSettings:
    """How guided samples are computed (conf/sampling/default.yaml).

    clip_x0: clip x0 estimates to [-clip_x0, clip_x0] (the data range); None: no clipping; "auto": the data's own
        range (1 for images in [-1, 1], no clipping for unbounded data such as the Gaussian mixture).
    precision: "32-true", or "bf16-mixed" to run the network under bf16 autocast (the guidance combination and
        the sampler's updates stay float32).
    batched: the conditional and unconditional predictions from one forward of 2B (True) or two forwards of B
        (False); "auto": batched on CUDA, two passes elsewhere. BENCHMARKS.md measured the 2B forward 1.4x slower
        than two B forwards on a 2-core CPU and faster on an H200, so "auto" keeps guided sampling at about
        twice the cost of unguided sampling on both.
    """

    clip_x0: Union[float, None, str] = "auto"
    precision: str = "32-true"
    batched: Union[bool, str] = "auto"

    def __post_init__(self):
        if self.clip_x0 != "auto" and self.clip_x0 is not None and (
                isinstance(self.clip_x0, (bool, str)) or not self.clip_x0 > 0):
            raise ValueError(f"clip_x0={self.clip_x0!r} must be a number > 0, null or 'auto'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {list(PRECISIONS)}")
        if self.batched != "auto" and not isinstance(self.batched, bool):
            raise ValueError(f"batched={self.batched!r} must be true, false or 'auto'")

    def resolve(self, device: torch.device | str, data_range: Optional[float]) -> dict:
        """The keyword arguments of `sample` for a network on `device` and data in [-data_range, data_range]
        (None: unbounded): {"clip_x0", "batched", "autocast"}."""
        batched = torch.device(device).type == "cuda" if self.batched == "auto" else self.batched
        clip_x0 = data_range if self.clip_x0 == "auto" else self.clip_x0
        return {"clip_x0": clip_x0, "batched": batched, "autocast": PRECISIONS[self.precision]}


def device_of(net: ModelFn) -> torch.device:
    """The device of a network's first parameter or buffer (the CPU for parameter-free callables)."""
    if isinstance(net, nn.Module):
        for tensor in (*net.parameters(), *net.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.inference_mode()
def sample(
    net: ModelFn,
    schedule: Schedule,
    sampler: Sampler,
    guidance: CFG,
    labels: Tensor,
    *,
    null_label: int,
    target: str = "eps",
    clip_x0: Optional[float] = None,
    batched: bool = True,
    autocast: Optional[torch.dtype] = None,
    generator: Optional[torch.Generator] = None,
    guide_net: Optional[ModelFn] = None,
) -> tuple[Tensor, float]:
    """Guided samples for `labels` and the network evaluations each sample cost.

    net: the joint conditional/unconditional network (x_t, t, labels) -> `target` prediction, with a
        `sample_shape` attribute, e.g. (C, H, W); labels in [0, null_label], null_label the unconditional one.
    labels: (B,) int64 on the device to sample on. generator: for the initial noise and the noise of
        ancestral steps, on that device. guide_net: the weaker network of autoguidance (None otherwise).
    Returns float samples (B, *net.sample_shape) on the labels' device and the NFE per sample.
    """
    check_sampler_guidance(sampler, guidance)
    noise = torch.randn((labels.shape[0], *net.sample_shape), generator=generator, device=labels.device)
    denoiser = GuidedDenoiser(net, schedule, guidance, null_label, target, batched, clip_x0, guide_net, autocast)
    was_training = getattr(net, "training", False)
    if isinstance(net, nn.Module):
        net.eval()
    try:
        return sampler(denoiser, schedule, noise, labels, generator), float(denoiser.nfe)
    finally:
        if isinstance(net, nn.Module):
            net.train(was_training)


def batch_seed(seed: int, index: int) -> int:
    """The generator seed of batch `index` of a run seeded with `seed`."""
    return seed * 1_000_003 + index


def sample_batches(
    net: ModelFn,
    schedule: Schedule,
    sampler: Sampler,
    guidance: CFG,
    labels: Tensor,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    progress: Optional[Callable[[int], None]] = None,
    **sample_kwargs,
) -> tuple[Tensor, float]:
    """`sample` over a label list (N,) in batches of `batch_size`, on the CPU: images as uint8 (N, C, H, W), as
    they are saved and measured; other data as float (N, ...). Also returns the mean NFE per sample.

    Batch i uses a generator seeded with batch_seed(seed, i) on the network's device, so a batch is the same
    whatever ran before it. With `world` > 1 this process makes only batches i = rank, rank + world, ...
    (concatenated in that order): put together in batch order, the shards of all ranks are exactly the images
    of a single process. `progress(n)` is called after each batch of n samples. sample_kwargs: `sample`'s
    keyword arguments (null_label, target, clip_x0, batched, autocast, guide_net).
    """
    device = device_of(net)
    out, nfe, count = [], 0.0, 0
    for i, start in enumerate(range(0, len(labels), batch_size)):
        if i % world != rank:
            continue
        batch = labels[start : start + batch_size].to(device)
        g = torch.Generator(device=device).manual_seed(batch_seed(seed, i))
        x, batch_nfe = sample(net, schedule, sampler, guidance, batch, generator=g, **sample_kwargs)
        x = x.cpu()
        out.append(to_uint8(x) if x.ndim == 4 else x)
        nfe, count = nfe + batch_nfe * len(batch), count + len(batch)
        if progress is not None:
            progress(len(batch))
    if not out:
        dtype = torch.uint8 if len(net.sample_shape) == 3 else torch.get_default_dtype()
        return torch.empty((0, *net.sample_shape), dtype=dtype), 0.0
    return torch.cat(out), nfe / count
