"""Reproduce the paper's claim at small scale: ft, ft_kl and DiSC over a learning-rate grid on BioASQ.

    python jobs/reproduce.py --quick        # under 30 minutes on 2 CPU cores
    python jobs/reproduce.py                # the full preset (~2 h on 2 cores; trials run in parallel on a cluster)
    python jobs/reproduce.py --quick --methods disc,ft,ft_kl,lora,talr    # with the LoRA and TALR baselines
    ray job submit --working-dir . -- python jobs/reproduce.py

Writes <out>/<name>/results.md|csv, tradeoff.png, retention_vs_lr.png, comparison.md (see disc_ray/reproduce.py).
"""

from __future__ import annotations

import sys

from disc_ray.reproduce import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
