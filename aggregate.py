"""Collect a multirun's guidance sweeps into one table and plot: python aggregate.py <multirun dir>."""

from cfglab.aggregate import main

if __name__ == "__main__":
    main()
