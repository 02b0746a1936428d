"""Prepare a data set's store: python prepare.py data=imagenet64 data.data_dir=... data.prepare_workers=16."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cfglab.config_checks import refuse_unknown_overrides
from cfglab.prepare import prepare_store


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    print(f"store: {prepare_store(cfg)}")


if __name__ == "__main__":
    refuse_unknown_overrides(sys.argv[1:], "prepare", Path(__file__).with_name("conf"))
    main()
