"""The reproduction experiment's driver end to end on a tiny model and 4 BioASQ passages: the sweep, the
per-method selection, the table with the original first, and both plots."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import BIOASQ

from disc_ray.reproduce import METHODS, PRESETS, Preset, run_reproduction, write_corpus


def test_presets_span_learning_rates_and_the_quick_one_is_small():
    for preset in PRESETS.values():
        assert len(preset.lrs) >= 3 and max(preset.lrs) / min(preset.lrs) >= 100
    assert PRESETS["quick"].documents < PRESETS["full"].documents


def test_corpus_subset_is_trained_on_and_asked_about(tmp_path):
    path = write_corpus(BIOASQ, 5, tmp_path / "subset.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5 and all(row["meta"]["context"] and len(row["options"]) == 4 for row in rows)


@pytest.fixture()
def ray_stopped_after():
    """The experiment starts a local Ray cluster (as the command does); later test modules start their own."""
    yield
    import ray

    ray.shutdown()


@pytest.mark.ray
def test_experiment_end_to_end_selects_per_method_by_the_papers_rule(tmp_path, tiny_model_dir, ray_stopped_after):
    """lr 3 wrecks the model at step 1 and the drift budget stops it (never selectable); lr 1e-9 changes nothing
    and keeps IFEval: the rule must pick it for each method."""
    preset = Preset(documents=4, lrs=(1e-9, 3.0), ifeval_limit=4, ifeval_max_new_tokens=16, mcq_samples=1,
                    drift_prompts=4, drift_every_n_steps=1)
    outcome = run_reproduction(
        preset, out_dir=tmp_path, name="tiny", model=str(tiny_model_dir), bioasq_path=BIOASQ, methods=("ft", "disc"),
        extra={"sweep": {"num_cpus": 6}, "scheduler": {"drift_budget": {"metric": "drift_kl", "max": 1.0}},
               "evaluation": {"progress": False, "cache_dir": str(tmp_path / "cache"), "mcq_max_new_tokens": 16,
                              "drift_max_new_tokens": 16}},
        log=lambda *_: None)
    experiment = tmp_path / "tiny"
    with (experiment / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["lr"]) for r in rows] == [("original", ""), ("ft", "1e-09"), ("ft", "3.0"),
                                                       ("disc", "1e-09"), ("disc", "3.0")]
    original = rows[0]
    assert original["mcq_ll"] and original["ifeval_inst_strict"] and float(original["drift_kl"]) < 1e-6
    for row in rows[1:]:
        gentle = row["lr"] == "1e-09"
        assert row["status"] == ("completed" if gentle else "stopped")
        assert row["selected"] == ("yes" if gentle else "")
        if gentle:  # evaluated on the same questions as the original, unchanged model: same scores, no drift
            assert row["mcq_ll"] == original["mcq_ll"] and float(row["ifeval_change"]) == 0.0
            assert float(row["drift_kl"]) < 1e-3
        else:
            assert row["mcq_ll"] == "" and float(row["drift_kl"]) > 1.0
    assert set(outcome["per_method"]) == {"ft", "disc"} and all(outcome["per_method"].values())
    comparison = (experiment / "comparison.md").read_text()
    assert "- ft: lr 1e-09" in comparison and "- disc: lr 1e-09" in comparison
    markdown = (experiment / "results.md").read_text()
    assert markdown.count("\n| ") == 6  # header + original + 4 runs
    for name in ("tradeoff.png", "retention_vs_lr.png"):
        assert (experiment / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert METHODS == ("ft", "ft_kl", "disc")


def test_domain_metric_is_what_the_rule_maximises(tmp_path):
    from disc_ray.reproduce import PRESETS, sweep_file

    common = dict(name="x", out_dir=tmp_path, corpus=tmp_path / "c.jsonl", model="m")
    assert sweep_file(PRESETS["quick"], **common)["selection"]["domain_metric"] == ["domain_mcq.accuracy_ll"]
    assert sweep_file(PRESETS["quick"], domain_metric="gen", **common)["selection"]["domain_metric"] == ["domain_mcq.accuracy_gen"]
    with pytest.raises(ValueError, match="domain_metric"):
        sweep_file(PRESETS["quick"], domain_metric="f1", **common)


@pytest.mark.ray
def test_command_line_rejects_too_many_documents(tmp_path):
    from disc_ray.reproduce import main

    assert main(["--quick", "--documents", "100000", "--out", str(tmp_path)]) == 2
