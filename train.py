"""Train a classifier-free guidance model: python train.py [overrides], e.g. data=mnist trainer.max_steps=20000."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cfglab.config_checks import refuse_unknown_overrides
from cfglab.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    result = train(cfg, HydraConfig.get().runtime.output_dir)
    if result["stopped_by"]:  # checkpointed and unfinished: report it as a process ended by that signal would
        sys.exit(128 + result["stopped_by"])
    return result["train/loss"]


if __name__ == "__main__":
    refuse_unknown_overrides(sys.argv[1:], "config", Path(__file__).with_name("conf"))
    main()
