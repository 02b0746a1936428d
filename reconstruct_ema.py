"""Post-hoc EMA checkpoints of a run trained with callbacks=phema: python reconstruct_ema.py <run dir> --sigma-rel 0.05."""

from cfglab.reconstruct_ema import main

if __name__ == "__main__":
    main()
