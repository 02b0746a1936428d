"""Load a trained module from a checkpoint written by train.py, without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf


def load_module(ckpt_path: str | Path, map_location: str = "cpu"):
    """Rebuild (data module, CFGDiffusion) from the config stored in the checkpoint and load its weights.

    The checkpoint's `state_dict` holds the EMA weights when training used EMAWeightAveraging; the module's
    `checkpoint_step` is the training step the checkpoint was written at.
    Loading uses `weights_only=True`: a checkpoint that needs arbitrary code to unpickle is refused.
    """
    from cfglab.train import build

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "cfglab_config" not in ckpt:
        raise ValueError(f"ckpt_path={str(path)!r} has no 'cfglab_config': not a checkpoint written by cfglab's train.py")
    datamodule, module = build(OmegaConf.create(ckpt["cfglab_config"]))
    module.load_state_dict(ckpt["state_dict"])
    module.checkpoint_step = int(ckpt.get("global_step", 0))
    return datamodule, module.eval()
