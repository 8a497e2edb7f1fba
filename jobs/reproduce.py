"""Reproduce the paper's claim at small scale: ft, ft_kl and DiSC over a learning-rate grid on BioASQ + synthetic.

    python jobs/reproduce.py --preset quick      # under 30 minutes on 2 CPU cores (--quick works too)
    python jobs/reproduce.py --preset full       # 208 passages + 24 synthetic documents, 2 seeds (~7 h; resumable)
    python jobs/reproduce.py --quick --methods disc,ft,ft_kl,lora,talr,rephrase,cd_base    # every baseline
    python jobs/reproduce.py --config my_sweep.yaml --evaluation.limit 32  # a sweep file of your own
    ray job submit --working-dir . -- python jobs/reproduce.py --preset full

Presets are sweep files: tune/spaces/reproduce_<preset>.yaml. Re-running the same command resumes the
experiment (finished runs are kept). Every option is a config key (``--help`` lists them); bad ones print one
``error:`` line and exit with code 2. Writes <out>/<name>/results.md|csv, tradeoff.png, retention_vs_lr.png,
frontier.png, comparison.md (see disc_ray/reproduce.py).
"""

from __future__ import annotations

import sys

from disc_ray.reproduce import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
