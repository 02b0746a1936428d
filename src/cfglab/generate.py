"""Samples of a checkpoint at chosen guidance strengths (the job behind generate.py).

For each w, `<run dir>/w<w>/` receives:
  samples.npz   arr_0: uint8 (N, H, W, C) images, the layout of the ADM evaluator of guided-diffusion and of DiT's
                sample_ddp.py (other data: float (N, D)); arr_1: int64 (N,) class labels
  images/       with png=true: one PNG per sample, `<index>_<label>.png` (torch-fidelity's and clean-fid's folder input)
  samples.json  what produced them: checkpoint path and sha256, training step, sampler, guidance, w, seed, counts,
                sampling settings, NFE per sample, seconds, and the run stamp

Generation is resumable and shards over processes: batch i of a w is written to `w<w>/batches/<i>.pt` (atomically)
as soon as it is done, and a rerun with the same run directory skips the batches that exist. Under torchrun or a
multi-task SLURM job, process r of W makes batches r, r + W, ...; process 0 waits for the others' batches and
puts them together, so the result equals a single process's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from cfglab.atomic import atomic_write, atomic_write_text
from cfglab.checkpoints import load_guide_net
from cfglab.config_checks import check_generate_config
from cfglab.devices import resolve_device
from cfglab.diffusion.sampling import describe_settings, sample_batch
from cfglab.loggers import checkpoint_job_loggers, finish_wandb
from cfglab.published.model import open_model
from cfglab.stamp import write_stamp
from cfglab.sweep import balanced_labels, ws_problems

log = logging.getLogger(__name__)


def process_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or SLURM's environment; (0, 1, 0) for a single process."""
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world]), int(os.environ.get(local, 0))
    return 0, 1, 0


def requested_labels(spec, num_samples: int, num_classes: Optional[int]) -> torch.Tensor:
    """The labels of `num_samples` samples (N,): 'balanced' (every class equally often), one class, or a list of
    classes repeated in order; each must be one of the model's `num_classes` classes (None: not known yet)."""
    if spec == "balanced":
        return balanced_labels(num_samples, num_classes or 1)
    spec = OmegaConf.to_container(spec) if isinstance(spec, ListConfig) else spec
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items or not all(isinstance(c, int) and not isinstance(c, bool) for c in items):
        raise ValueError(f"labels={spec!r} must be 'balanced', a class index or a non-empty list of class indices")
    outside = [c for c in items if c < 0 or num_classes is not None and c >= num_classes]
    if outside:
        classes = f"0 ... {num_classes - 1}" if num_classes is not None else "0, 1, ..."
        raise ValueError(f"labels={spec!r}: class {outside[0]} is not one of the checkpoint's classes {classes}")
    return torch.tensor(items, dtype=torch.long).repeat(-(-num_samples // len(items)))[:num_samples]


@dataclass(frozen=True)
class GenerateSettings:
    """What generate.py makes (conf/generate.yaml's top level): `num_samples` samples of `labels` at every w of
    `ws`, in batches of `batch_size` seeded from `seed`, with one PNG per sample if `png`."""

    ws: Sequence[float]
    labels: Union[str, int, Sequence[int]] = "balanced"
    num_samples: int = 50_000
    batch_size: int = 500
    seed: int = 0
    png: bool = False

    def __post_init__(self):
        problems = ws_problems(self.ws)
        if problems:
            raise ValueError("; ".join(f"ws{i}: {m}" for i, m in problems))
        object.__setattr__(self, "ws", tuple(float(w) for w in self.ws))
        for k in ("num_samples", "batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}={v!r} must be an integer >= 1")
        requested_labels(self.labels, 1, None)  # the label's form; the classes are the checkpoint's

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "GenerateSettings":
        return cls(**{k: OmegaConf.to_container(cfg[k]) if isinstance(cfg[k], ListConfig) else cfg[k]
                      for k in cls.__dataclass_fields__ if k in cfg})


def generate(cfg: DictConfig, out_dir: str | Path) -> list[Path]:
    """Write the samples of every w of `cfg.ws`; returns the paths of the finished samples.npz files (those this
    process completed or found complete)."""
    out_dir = Path(out_dir)
    check_generate_config(cfg)
    rank, world, local_rank = process_rank()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", local_rank)
    settings = GenerateSettings.from_config(cfg)
    sampler, guidance, sampling = instantiate(cfg.sampler), instantiate(cfg.guidance), instantiate(cfg.sampling)
    ckpt = open_model(cfg)
    datamodule, module = ckpt.module(data=OmegaConf.to_container(cfg.data))
    module.to(device)
    labels = requested_labels(settings.labels, settings.num_samples, module.num_classes)
    sample_kwargs = sampling.resolve(device, datamodule.data_range, datamodule.decoder)
    kwargs = {**sample_kwargs, **module.sampling_args(), "guide_net": load_guide_net(guidance, module)}
    stamp = write_stamp(out_dir, device)
    source = {"ckpt_path": str(ckpt.path.resolve()), "ckpt_sha256": ckpt.sha256, "step": ckpt.step}
    done = []
    for w in settings.ws:
        request = {**source, "sampler": repr(sampler), "guidance": repr(guidance), "w": w, "seed": settings.seed,
                   "num_samples": settings.num_samples, "batch_size": settings.batch_size, "labels": settings.labels,
                   "sampling": describe_settings(sample_kwargs)}
        wdir = out_dir / f"w{w:g}"
        if _finished(wdir, request):
            log.info("w=%g: %s already holds these samples", w, wdir / "samples.npz")
            done.append(wdir / "samples.npz")
            continue
        _claim(wdir, request)
        n_batches = -(-settings.num_samples // settings.batch_size)
        t0, made = time.perf_counter(), 0
        for i in range(rank, n_batches, world):
            path = wdir / "batches" / f"{i:06d}.pt"
            if path.is_file():
                continue
            x, nfe = sample_batch(sampler=sampler, guidance=guidance, labels=labels, w=w,
                                  batch_size=settings.batch_size, seed=settings.seed, index=i, **kwargs)
            atomic_write(path, lambda tmp: torch.save({"samples": x, "nfe": nfe}, tmp))
            made += len(x)
            log.info("w=%g: batch %d of %d written (%d samples in %.1f s here)", w, i + 1, n_batches, made,
                     time.perf_counter() - t0)
        if rank == 0:  # the others' batches may still be on their way
            _wait_for([wdir / "batches" / f"{i:06d}.pt" for i in range(n_batches)])
            done.append(_assemble(wdir, request, labels, n_batches, settings.png, stamp))
            log.info("w=%g: %d samples in %s (%.1f s)", w, settings.num_samples, wdir / "samples.npz",
                     time.perf_counter() - t0)
    if rank == 0:
        _log(cfg, ckpt.run, done, stamp)
    return done


def _log(cfg: DictConfig, identity: dict, done: list[Path], stamp: dict) -> None:
    """The metadata of every finished w (samples.json) to the chosen loggers: W&B gets a run of job type generate
    in the training run's group, with one row per w and the metadata in its summary."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = checkpoint_job_loggers(cfg.logger, identity, "generate")
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "stamp": stamp})
        for path in done:
            meta = json.loads((path.parent / "samples.json").read_text())
            w = meta["request"]["w"]
            lg.log_metrics({"generate/w": w, "generate/nfe": meta["nfe_per_sample"], "generate/samples": meta["samples"]})
            if isinstance(lg, WandbLogger):
                lg.experiment.summary[f"generate/w={w:g}"] = {**meta, "path": str(path)}
        lg.finalize("success")
    finish_wandb(loggers)


def _wait_for(paths: list[Path], stall_s: float = 600.0) -> None:
    """Return once every path exists; give up when none has appeared for `stall_s` seconds (a process died)."""
    missing, since = [p for p in paths if not p.is_file()], time.monotonic()
    while missing:
        time.sleep(1.0)
        still = [p for p in missing if not p.is_file()]
        if len(still) < len(missing):
            since = time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise RuntimeError(f"{len(still)} batches never arrived (e.g. {still[0]}): a process died; rerun generate.py "
                               "with the same hydra.run.dir and number of processes to make them")
        missing = still


def _finished(wdir: Path, request: dict) -> bool:
    meta = wdir / "samples.json"
    return meta.is_file() and (wdir / "samples.npz").is_file() and json.loads(meta.read_text())["request"] == request


def _claim(wdir: Path, request: dict) -> None:
    """Record the request that the batches in `wdir` belong to; refuse a folder that holds another request's."""
    path = wdir / "request.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier != request:
            changed = sorted(k for k in request if earlier.get(k) != request[k])
            raise ValueError(f"{wdir} holds samples of another request (differing in {changed}): choose another "
                             "hydra.run.dir, or delete the folder to start afresh")
        return
    atomic_write_text(path, json.dumps(request, indent=1))


def _assemble(wdir: Path, request: dict, labels: torch.Tensor, n_batches: int, png: bool, stamp: dict) -> Path:
    """Put the batches together into samples.npz (and PNGs), write samples.json, then delete the batches."""
    blobs = [torch.load(wdir / "batches" / f"{i:06d}.pt", weights_only=True) for i in range(n_batches)]
    samples = torch.cat([b["samples"] for b in blobs])
    nfe = sum(b["nfe"] * len(b["samples"]) for b in blobs) / len(samples)
    array = samples.permute(0, 2, 3, 1).numpy() if samples.ndim == 4 else samples.numpy()
    npz = wdir / "samples.npz"

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, array, labels.numpy())

    atomic_write(npz, save)
    if png and samples.ndim == 4:
        folder = wdir / "images"
        folder.mkdir(exist_ok=True)
        for i, (image, label) in enumerate(zip(array, labels.tolist())):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{i:06d}_{label}.png")
    counts = torch.bincount(labels).tolist()
    meta = {"request": request, "samples": len(samples), "shape": list(array.shape), "class_counts": counts,
            "nfe_per_sample": nfe, "npz": str(npz), "png_dir": str(wdir / "images") if png else None,
            "stamp": stamp}
    atomic_write_text(wdir / "samples.json", json.dumps(meta, indent=1))
    for i in range(n_batches):
        (wdir / "batches" / f"{i:06d}.pt").unlink(missing_ok=True)
    (wdir / "batches").rmdir()
    return npz
