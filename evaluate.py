"""Guidance sweep on a checkpoint: python evaluate.py ckpt_path=... sweep.ws='[0,0.5,1,2,4]' [sampler=... metrics=...]."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cfglab.config_checks import refuse_unknown_overrides
from cfglab.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    refuse_unknown_overrides(sys.argv[1:], "evaluate", Path(__file__).with_name("conf"))
    main()
