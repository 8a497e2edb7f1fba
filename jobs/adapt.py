"""Adapt a post-trained model to a document corpus with DiSC, data-parallel on Ray.

    python jobs/adapt.py                                   # embedded default model + built-in synthetic corpus, local Ray
    python jobs/adapt.py --config configs/cpu.yaml --train.lr 2e-5
    python jobs/adapt.py --data.path ../shared/data/bioasq_mcq --data.text_field meta.context
    ray job submit --working-dir . -- python jobs/adapt.py --config configs/cpu.yaml

Every option is a config key (see ``disc_ray/config.py`` and configs/*.yaml), given as
``--section.key value`` or ``--section.key=value``. Invalid configs fail before any worker starts,
with one line that names the bad key, and exit code 2.
"""

from __future__ import annotations

import sys

from disc_ray.adapt import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
