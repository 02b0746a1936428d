"""Progressive distillation of a guidance-distilled student, one train.py job per round:
python distill.py experiment=progressive_mnist teacher_ckpt=<stage-one run>/checkpoints/last.ckpt [rounds='[8,4]']
Rerun with the same hydra.run.dir to continue an interrupted chain."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cfglab.config_checks import refuse_unknown_overrides
from cfglab.progressive import run_rounds


@hydra.main(version_base="1.3", config_path="conf", config_name="distill")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    code = run_rounds(cfg, hc.runtime.output_dir, hc.overrides.task, Path(__file__).with_name("train.py"))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    refuse_unknown_overrides(sys.argv[1:], "distill", Path(__file__).with_name("conf"))
    main()
