"""Guided sampling as plain functions: every caller (the training sweep, the end-of-job grids, evaluate.py, the
benchmarks) samples through `sample` or, for a list of labels in seeded batches, `sample_batches`.

How samples are computed (clipping, precision, one 2B forward or two B forwards) is `SamplingSettings`, kept
apart from what is sampled (the network), how it is stepped (the sampler), how it is guided (the guidance
method) and how strongly (w, an argument of every call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from cfglab.diffusion.denoiser import GuidedDenoiser, NetFn, guidance_range
from cfglab.diffusion.guidance import Guidance, check_sampler_guidance, check_student_guidance
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
    guided_channels: guide only the first k channels of the model's samples, the others keep the conditional
        prediction: 3 reproduces DiT's sampling code (its `forward_with_cfg` guides 3 of its 4 latent channels,
        the setting of its published FIDs); None (the default): every channel, the method as written.
    """

    clip_x0: Union[float, None, str] = "auto"
    precision: str = "32-true"
    batched: Union[bool, str] = "auto"
    guided_channels: Optional[int] = None

    def __post_init__(self):
        if self.clip_x0 != "auto" and self.clip_x0 is not None and (
                isinstance(self.clip_x0, (bool, str)) or not self.clip_x0 > 0):
            raise ValueError(f"clip_x0={self.clip_x0!r} must be a number > 0, null or 'auto'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {list(PRECISIONS)}")
        if self.batched != "auto" and not isinstance(self.batched, bool):
            raise ValueError(f"batched={self.batched!r} must be true, false or 'auto'")
        k = self.guided_channels
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"sampling.guided_channels={k!r} must be an integer >= 1 or null (every channel)")

    def resolve(self, device: torch.device | str, data_range: Optional[float],
                decode: Optional[Callable[[Tensor], Tensor]] = None) -> dict:
        """The keyword arguments of `sample` for a network on `device` and data in [-data_range, data_range]
        (None: unbounded), whose samples `decode` turns into images (the data module's `decoder`; None: they
        are the data): {"clip_x0", "batched", "autocast", "decode", "guided_channels"}. Clipping unbounded data to a range is
        refused: it would distort the samples."""
        if data_range is None and self.clip_x0 not in ("auto", None):
            raise ValueError(f"clip_x0={self.clip_x0!r}, but the data are unbounded, not images in [-1, 1]: clipping "
                             "the x0 estimates would distort the samples; use 'auto' (no clipping for such data) or "
                             "null")
        batched = torch.device(device).type == "cuda" if self.batched == "auto" else self.batched
        clip_x0 = data_range if self.clip_x0 == "auto" else self.clip_x0
        return {"clip_x0": clip_x0, "batched": batched, "autocast": PRECISIONS[self.precision], "decode": decode,
                "guided_channels": self.guided_channels}


def describe_settings(sample_kwargs: dict) -> dict:
    """`SamplingSettings.resolve`'s keyword arguments as JSON for the keys of finished sweep points and generated
    sets: dtypes by name, a decoder as whether there is one (which one is the checkpoint's, named elsewhere),
    guided_channels only when set."""
    return {k: (v is not None) if k == "decode" else str(v) if isinstance(v, torch.dtype) else v
            for k, v in sample_kwargs.items()
            if (k, v) != ("guided_channels", None)}  # absent when off: points finished before it existed hold


def device_of(net: NetFn) -> torch.device:
    """The device of a network's first parameter or buffer (the CPU for parameter-free callables)."""
    if isinstance(net, nn.Module):
        for tensor in (*net.parameters(), *net.buffers()):
            return tensor.device
    return torch.device("cpu")


def step_strengths(guidance: Guidance, w: float, schedule: Schedule, sampler: Sampler) -> list[float]:
    """The guidance strength of each step of `sampler`'s time grid at the point's strength `w`."""
    ts = sampler.grid(schedule)[:-1]
    return [guidance.strength(w, float(t), float(lam)) for t, lam in zip(ts, schedule.log_snr(ts))]


def check_sampling(w_range: Optional[tuple[float, float]], schedule: Schedule, sampler: Sampler, guidance: Guidance,
                   w: float) -> None:
    """Raise ValueError if `sample` would refuse this combination: a strength the method does not take, a sampler
    the method cannot step with, or guidance that a guidance-distilled network (`w_range`: its guidance_range;
    None: a joint model) cannot reproduce. `sample` runs it, and the configuration check before any compute."""
    guidance.check_w(w)
    check_sampler_guidance(sampler, guidance)
    if w_range is not None:
        check_student_guidance(w_range, guidance, w, step_strengths(guidance, w, schedule, sampler))


@torch.inference_mode()
def sample(
    net: NetFn,
    schedule: Schedule,
    sampler: Sampler,
    guidance: Guidance,
    labels: Tensor,
    *,
    w: float,
    null_label: int,
    target: str = "eps",
    clip_x0: Optional[float] = None,
    batched: bool = True,
    autocast: Optional[torch.dtype] = None,
    generator: Optional[torch.Generator] = None,
    guide_net: Optional[NetFn] = None,
    noise: Optional[Tensor] = None,
    decode: Optional[Callable[[Tensor], Tensor]] = None,
    guided_channels: Optional[int] = None,
) -> tuple[Tensor, float]:
    """Samples for `labels` guided by `guidance` at strength `w`, and the network evaluations each sample cost.

    net: the joint conditional/unconditional network (x_t, t, labels) -> `target` prediction, with a
        `sample_shape` attribute, e.g. (C, H, W); labels in [0, null_label], null_label the unconditional one.
        A guidance-distilled network (with a `guidance_range`) takes each step's w as its input instead: one
        forward per step, for guidance methods that combine as CFG does and strengths within its range.
    labels: (B,) int64 on the device to sample on. generator: for the noise of ancestral steps, on that
        device, and for the initial noise x_1 unless `noise` gives it (B, *net.sample_shape) (see `seeded_noise`).
        guide_net: the weaker network of autoguidance (None otherwise). decode: latents -> images in [-1, 1]
        for a latent diffusion model (the data module's `decoder`), applied to the final samples.
        guided_channels: guide only the first k channels (SamplingSettings).
    Returns float samples (B, *net.sample_shape), decoded images with `decode`, on the labels' device and the
    NFE per sample.
    """
    check_sampling(guidance_range(net), schedule, sampler, guidance, w)
    if noise is None:
        noise = torch.randn((labels.shape[0], *net.sample_shape), generator=generator, device=labels.device)
    denoiser = GuidedDenoiser(net, schedule, guidance, w, null_label, target, batched, clip_x0, guide_net, autocast,
                              guided_channels)
    was_training = isinstance(net, nn.Module) and net.training
    if was_training:
        net.eval()
    try:
        x = sampler(denoiser, schedule, noise, labels, generator)
    finally:
        if was_training:
            net.train(was_training)
    return (x if decode is None else decode(x)), float(denoiser.nfe)


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> tuple[Tensor, torch.Generator]:
    """The initial noise x_1 of a sampling run seeded with `seed`, on `device`, and the generator for the noise
    its ancestral steps add. x_1 is drawn on the CPU, so deterministic samplers (DDIM with eta = 0, DPM-Solver++)
    give the same samples on every device up to float rounding; CUDA's generator draws other numbers than the
    CPU's, so ancestral steps on a GPU add other (equally distributed) noise. On the CPU the generator continues
    the stream that drew x_1."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=g)
    if torch.device(device).type == "cpu":
        return noise, g
    return noise.to(device), torch.Generator(device=device).manual_seed(seed)


SEED_STRIDE = 1_000_003  # batches per seed: seed s owns the generator seeds [s * SEED_STRIDE, (s + 1) * SEED_STRIDE)


def batch_seed(seed: int, index: int) -> int:
    """The generator seed of batch `index` of a run seeded with `seed` (index < SEED_STRIDE)."""
    return seed * SEED_STRIDE + index


def sample_batch(net: NetFn, schedule: Schedule, sampler: Sampler, guidance: Guidance, labels: Tensor, *, w: float,
                 batch_size: int, seed: int, index: int, repeat: int = 0, **sample_kwargs) -> tuple[Tensor, float]:
    """Batch `index` of the label list (N,): its samples on the CPU, images as uint8 (B, C, H, W) as they are
    saved and measured, other data as float (B, ...); and the NFE per sample.

    The batch is labels[index * batch_size : (index + 1) * batch_size], sampled on the network's device from
    seeded_noise(..., batch_seed(seed, index), ...): the same whatever ran before it, in this process or another.
    repeat r of the same labels continues the seeds after those of repeat r - 1: batch_seed(seed, r * n + index)
    with n the number of batches, so repeats are disjoint noise sets, the same ones at every w and for every method.
    sample_kwargs: `sample`'s keyword arguments (null_label, target, clip_x0, batched, autocast, guide_net,
    decode).
    """
    device = device_of(net)
    batch = labels[index * batch_size : (index + 1) * batch_size].to(device)
    first = repeat * -(-len(labels) // batch_size)
    noise, g = seeded_noise((len(batch), *net.sample_shape), batch_seed(seed, first + index), device)
    x, nfe = sample(net, schedule, sampler, guidance, batch, w=w, generator=g, noise=noise, **sample_kwargs)
    x = x.cpu()
    return (to_uint8(x) if x.ndim == 4 else x), nfe


def sample_batches(
    net: NetFn,
    schedule: Schedule,
    sampler: Sampler,
    guidance: Guidance,
    labels: Tensor,
    *,
    w: float,
    batch_size: int,
    seed: int,
    repeat: int = 0,
    rank: int = 0,
    world: int = 1,
    progress: Optional[Callable[[int], None]] = None,
    **sample_kwargs,
) -> tuple[Tensor, float]:
    """`sample_batch` over every batch of the label list (N,), concatenated, and the mean NFE per sample.

    With `world` > 1 this process makes only batches i = rank, rank + world, ... (concatenated in that order):
    put together in batch order, the shards of all ranks are exactly the samples of a single process.
    `progress(n)` is called after each batch of n samples.
    """
    out, nfe, count = [], 0.0, 0
    for i in range(rank, -(-len(labels) // batch_size), world):
        x, batch_nfe = sample_batch(net, schedule, sampler, guidance, labels, w=w, batch_size=batch_size, seed=seed,
                                    index=i, repeat=repeat, **sample_kwargs)
        out.append(x)
        nfe, count = nfe + batch_nfe * len(x), count + len(x)
        if progress is not None:
            progress(len(x))
    if not out:  # a rank without a batch: an empty tensor shaped like the others' samples
        shape = net.sample_shape
        if sample_kwargs.get("decode") is not None:
            shape = sample_kwargs["decode"](torch.zeros((1, *shape), device=device_of(net))).shape[1:]
        dtype = torch.uint8 if len(shape) == 3 else torch.get_default_dtype()
        return torch.empty((0, *shape), dtype=dtype), 0.0
    return torch.cat(out), nfe / count
