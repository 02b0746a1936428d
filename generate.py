"""Samples of a checkpoint: python generate.py ckpt_path=... ws='[0,1,3]' num_samples=50000 [png=true labels=3].
Several processes: torchrun --nproc_per_node N generate.py ... hydra.run.dir=<one folder for all of them>."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cfglab.config_checks import refuse_unknown_overrides
from cfglab.generate import generate


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    for path in generate(cfg, HydraConfig.get().runtime.output_dir):
        print(f"samples: {path}")


if __name__ == "__main__":
    refuse_unknown_overrides(sys.argv[1:], "generate", Path(__file__).with_name("conf"))
    main()
