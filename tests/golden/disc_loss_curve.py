"""The golden DiSC loss curve: what a fixed tiny run must reproduce, step by step (torchtitan-style loss file).

A 2-layer random model of the embedded default's family (``build_tiny_model``, seed 0) is adapted with the
single-process loop (``run_adaptation``: packing, chunked head, KL, AdamW, scheduler) on the first
``NUM_PASSAGES`` BioASQ passages (``../shared/data/bioasq_mcq``, as tests/conftest.py reads them), fp32 on CPU,
one thread, every seed fixed. Its per-step loss, kl and grad_norm are stored in ``disc_loss_curve.json``;
``tests/test_golden.py`` compares every run against them, so a change to the objective, the packing or the
data path (tokenization, segmentation, split points) shows up as a diff instead of a silent drift.

    python tests/golden/disc_loss_curve.py           # run, print the largest deviation from the stored curve
    python tests/golden/disc_loss_curve.py --write   # regenerate disc_loss_curve.json; commit it with the change
                                                     # that moved it, and say why in the commit message
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_suffix(".json")
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
NUM_PASSAGES = 8
SETTINGS = {"lr": 3e-3, "batch_size": 2, "epochs": 8, "seed": 0, "max_length": 512}  # 8 passages / 2 x 8 epochs = 32 steps
CURVE_KEYS = ("loss", "kl", "grad_norm")
# Tolerance: |run - golden| <= ATOL + RTOL * |golden| for every step's loss, kl and grad_norm. fp32 on CPU with one
# thread and deterministic algorithms is bit-identical from run to run on one machine (measured: 0.0). Another CPU
# or BLAS build sums in another order; changing the thread count (1 -> 2 or 4) stands in for that and moved the
# curve by at most 1.4e-7 absolute on loss/kl (1.0e-4 relative: the KL, ~1e-3, is a small difference of O(1)
# log-probabilities, so rounding shows relative to it) and 1.6e-7 relative on grad_norm. The tolerance is ~7x that
# (loss ~1e-3: ~4e-6 allowed), while a 1% change of the learning rate alone moves the loss by 6e-5, 15x beyond it.
RTOL, ATOL = 1e-3, 1e-6

def read_passages(count: int = NUM_PASSAGES) -> list[str]:
    """The first ``count`` BioASQ passages (``meta.context``), in file order."""
    rows = [json.loads(line) for line in BIOASQ.read_text().splitlines() if line.strip()]
    return [row["meta"]["context"] for row in rows[:count]]


def compute_curve() -> dict[str, list[float]]:
    """Run the fixed tiny adaptation; returns ``{"loss": [...], "kl": [...], "grad_norm": [...]}``, one value per step."""
    from disc_ray.config import TrainConfig
    from disc_ray.loop import run_adaptation
    from disc_ray.models import build_tiny_model, embedded_default_dir

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # one summation order for every CPU matmul, whatever the machine's core count
    torch.use_deterministic_algorithms(True)
    try:
        model, tokenizer = build_tiny_model(str(embedded_default_dir()), seed=0)
        train_cfg = TrainConfig(lr=SETTINGS["lr"], batch_size=SETTINGS["batch_size"], epochs=SETTINGS["epochs"],
                                seed=SETTINGS["seed"])
        result = run_adaptation(model, tokenizer, read_passages(), train_cfg=train_cfg, max_length=SETTINGS["max_length"],
                                log=lambda *_: None)
    finally:  # the test runs inside a pytest session: leave the process as it was
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return {key: [float(step[key]) for step in result.history] for key in CURVE_KEYS}


def curve_differences(curve: dict, golden: dict) -> list[str]:
    """One line per value of ``curve`` outside the tolerance of ``golden`` (empty: the curves match)."""
    problems = []
    for key in CURVE_KEYS:
        if len(curve[key]) != len(golden[key]):
            problems.append(f"{key}: {len(curve[key])} steps, the golden curve has {len(golden[key])}")
            continue
        for step, (value, expected) in enumerate(zip(curve[key], golden[key]), start=1):
            if abs(value - expected) > ATOL + RTOL * abs(expected):
                problems.append(f"step {step} {key}: {value:.9g}, golden {expected:.9g} (diff {value - expected:.3g})")
    return problems

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.name} from this run")
    args = parser.parse_args(argv)
    curve = compute_curve()
    if args.write:
        record = {"about": "tests/golden/disc_loss_curve.py: tiny model, fp32, CPU, 1 thread; regenerate with --write",
                  "passages": NUM_PASSAGES, "settings": SETTINGS, "torch": torch.__version__, **curve}
        GOLDEN.write_text(json.dumps(record, indent=1).replace("\n  ", " ").replace("\n ]", " ]") + "\n")
        print(f"wrote {GOLDEN} ({len(curve['loss'])} steps, loss {curve['loss'][0]:.6g} -> {curve['loss'][-1]:.6g})")
        return 0
    problems = curve_differences(curve, json.loads(GOLDEN.read_text()))
    print("\n".join(problems) or f"{len(curve['loss'])} steps match {GOLDEN.name} (atol {ATOL}, rtol {RTOL})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
