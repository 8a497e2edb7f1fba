"""Sweep DiSC / ft / ft_kl settings with Ray Tune; select by the knowledge/retention trade-off.

    python tune/sweep.py --config tune/spaces/lr_by_method.yaml            # runs, or resumes if the sweep folder has one
    python tune/sweep.py --config tune/spaces/disc_splits.yaml --resume     # resume only (fails if there is nothing to resume)
    python tune/sweep.py --config tune/spaces/lr_by_method.yaml --select-only --selection.max_drop 3
    ray job submit --working-dir . -- python tune/sweep.py --config tune/spaces/lr_by_method.yaml

Any sweep-file key can be overridden as ``--section.key value`` (``--sweep.storage_path /data/sweeps``).
Invalid sweep files fail before Ray starts, with one line that names the bad key, and exit code 2.
Outputs, in ``<sweep.storage_path>/<sweep.name>/``: trials.csv, trials.md, selected.yaml, pareto.png.
"""

from __future__ import annotations

import sys

from disc_ray.tuning.driver import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
