"""Evaluate an adapted model: domain knowledge (closed-book MCQ), instruction following (IFEval), drift.

    python jobs/evaluate.py MODEL_DIR --baseline smollm2-135m-instruct --evaluation.suites domain_mcq,ifeval,drift
    python jobs/evaluate.py smollm2-135m-instruct --evaluation.suites domain_mcq --evaluation.limit 16 --evaluation.mcq_modes ll --out eval/base
    python jobs/evaluate.py MODEL_DIR --baseline ORIGINAL --evaluation.backend vllm --evaluation.vllm.tensor_parallel_size 2

Writes OUT/eval.json (every metric, suite versions, backend, seed; with a baseline the deltas and the
selection rule's verdict), OUT/eval.md and OUT/samples/*.jsonl (OUT defaults to MODEL_DIR/eval).
Bad inputs print one ``error:`` line and exit with code 2. Options: ``--help``.
"""

from __future__ import annotations

import sys

from disc_ray.evaluation.runner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
