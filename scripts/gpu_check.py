"""Run the solver benchmark table (scripts/bench_table.py) on CUDA: ``python scripts/gpu_check.py``.

Without a CUDA device it says so and exits 0. With one, CUDA becomes the default device (the
workloads build networks and stimuli there) and the table runs without the RSS section
(peak host memory says little about a GPU run; the script prints
torch.cuda.max_memory_allocated instead).
"""

from __future__ import annotations

import os
import sys

import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device available; nothing to run (exit 0).")
        return 0
    sys.path.insert(0, os.path.dirname(__file__))
    import bench_table

    print(f"gpu_check: {torch.cuda.get_device_name(0)}")
    torch.set_default_device("cuda")
    torch.cuda.reset_peak_memory_stats()
    bench_table.main(["--skip-memory", *sys.argv[1:]])
    print(f"\npeak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
