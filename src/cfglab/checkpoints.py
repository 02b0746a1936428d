"""Load a trained module from a checkpoint written by train.py, without unpickling arbitrary objects."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from cfglab.build import build
from cfglab.diffusion.guidance import CFG, Autoguidance

log = logging.getLogger(__name__)

# Sampling settings that checkpoints written before the `sampling` config group kept under `module`.
MOVED_MODULE_KEYS = {"clip_x0": "sampling.clip_x0", "batched_guidance": "sampling.batched",
                     "sample_precision": "sampling.precision"}


def load_module(ckpt_path: str | Path, map_location: str = "cpu", data: Optional[dict] = None):
    """Rebuild (data module, CFGDiffusion) from the config stored in the checkpoint and load its weights.

    data: settings that replace the checkpoint's own data settings, e.g. {"data_dir": ...} for a checkpoint
    trained on another machine; each must be a setting the stored data config has.
    The checkpoint's `state_dict` holds the EMA weights when training used EMAWeightAveraging; the module's
    `checkpoint_step` is the training step the checkpoint was written at.
    Loading uses `weights_only=True`: a checkpoint that needs arbitrary code to unpickle is refused.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r} does not exist")
    config = stored_config(path)  # a damaged file is named before anything is built
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    moved = {k: config["module"].pop(k) for k in list(config.get("module", {})) if k in MOVED_MODULE_KEYS}
    if moved:
        log.warning("%s was written by an older cfglab that kept sampling settings in the model (%s); they are not "
                    "used: sampling follows the `sampling` config group (%s)", path,
                    ", ".join(f"module.{k}={v!r}" for k, v in moved.items()),
                    ", ".join(MOVED_MODULE_KEYS[k] for k in moved))
    config["data"] = data_config(config, data)
    datamodule, module = build(OmegaConf.create(config))
    module.load_state_dict(ckpt["state_dict"])
    module.checkpoint_step = int(ckpt.get("global_step", 0))
    return datamodule, module.eval()


def read_checkpoint(path: str | Path, advice: str) -> dict:
    """A checkpoint's contents, memory-mapped (tensors are read only when used); a truncated or corrupt file is
    a ValueError naming it and saying what to do (`advice`), not an unpickling traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):  # whole, but it needs arbitrary code to unpickle
            raise ValueError(f"{str(path)!r} holds objects that only arbitrary code can unpickle, and cfglab loads "
                             f"checkpoints with weights_only=True: {advice}") from e
        raise ValueError(f"{str(path)!r} is truncated or corrupt, not a readable checkpoint ({e}): {advice}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is truncated or corrupt, not a readable checkpoint "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): {advice}") from e


def stored_config(ckpt_path: str | Path, advice: str = "point ckpt_path at another checkpoint") -> dict:
    """The cfglab config a checkpoint was written with, read without loading its weights into memory."""
    return _config_of(read_checkpoint(ckpt_path, advice), ckpt_path)


def run_identity(ckpt_path: str | Path) -> dict:
    """The name and group of the training run that wrote a checkpoint (and its W&B project and id, if it logged
    there); for a checkpoint without them, the run directory's name (<run>/checkpoints/<file>) and no group."""
    stored = read_checkpoint(ckpt_path, "point ckpt_path at another checkpoint").get("cfglab_run")
    return dict(stored) if stored else {"name": Path(ckpt_path).resolve().parent.parent.name, "group": None}


def _config_of(ckpt: dict, path: str | Path) -> dict:
    if "cfglab_config" not in ckpt:
        raise ValueError(f"ckpt_path={str(path)!r} has no 'cfglab_config': not a checkpoint written by cfglab's train.py")
    return ckpt["cfglab_config"]


def data_config(config: dict, data: Optional[dict]) -> dict:
    """The checkpoint's data settings with the non-null values of `data` replacing some of them; each must be one
    it has."""
    data = {k: v for k, v in (data or {}).items() if v is not None}
    unknown = sorted(set(data) - set(config["data"]))
    if unknown:
        raise ValueError(f"data.{unknown[0]}: not a setting of this checkpoint's data ({config['data']['_target_']}); "
                         f"it has {sorted(k for k in config['data'] if not k.startswith('_'))}")
    return {**config["data"], **data}


def load_guide_net(guidance: CFG, module) -> Optional[nn.Module]:
    """The weaker network that autoguidance guides with, on `module`'s device (None for other methods).

    It must be a model of the same kind: the same classes, prediction target and noise schedule."""
    if not isinstance(guidance, Autoguidance):
        return None
    if not guidance.guide_ckpt:
        raise ValueError("autoguidance needs guidance.guide_ckpt: the checkpoint of a weaker model")
    _, guide = load_module(guidance.guide_ckpt)
    kind = lambda m: (m.num_classes, m.target, repr(m.schedule))  # noqa: E731
    if kind(guide) != kind(module):
        raise ValueError(f"guide_ckpt={guidance.guide_ckpt!r} has num_classes, target, schedule = {kind(guide)}; "
                         f"this model has {kind(module)}")
    return guide.net.to(module.device).eval()
