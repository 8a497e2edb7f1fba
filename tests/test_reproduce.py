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
    assert sweep_file(PRESETS["quick"], **common)["selection"]["domain_metric"] == ["domain_mcq.prob_correct"]
    assert sweep_file(PRESETS["quick"], domain_metric="ll", **common)["selection"]["domain_metric"] == ["domain_mcq.accuracy_ll"]
    assert sweep_file(PRESETS["quick"], domain_metric="gen", **common)["selection"]["domain_metric"] == ["domain_mcq.accuracy_gen"]
    with pytest.raises(ValueError, match="domain_metric"):
        sweep_file(PRESETS["quick"], domain_metric="f1", **common)


@pytest.mark.ray
def test_command_line_rejects_too_many_documents(tmp_path):
    from disc_ray.reproduce import main

    assert main(["--quick", "--documents", "100000", "--out", str(tmp_path)]) == 2


def test_methods_flag_accepts_every_objective_and_rejects_others(tmp_path, capsys):
    from disc_ray.reproduce import ALL_METHODS, PRESETS, main, parse_methods, sweep_file

    assert parse_methods("disc,ft,ft_kl,lora,talr") == ("disc", "ft", "ft_kl", "lora", "talr")
    assert set(ALL_METHODS) == {"disc", "ft", "ft_kl", "lora", "talr", "rephrase", "cd_base"}
    from disc_ray.tuning.space import parse_sweep

    (tmp_path / "c.jsonl").write_text("{}\n")
    raw = sweep_file(PRESETS["quick"], name="x", out_dir=tmp_path, corpus=tmp_path / "c.jsonl", model="smollm2-135m-instruct",
                     methods=parse_methods("talr,lora"))
    assert parse_sweep(raw).param_space()["objective.name"] == {"grid_search": ["talr", "lora"]}  # validated per trial
    for bad in ("disc,sft", "ft,ft", ""):
        with pytest.raises(ValueError, match="--methods"):
            parse_methods(bad)
    assert main(["--quick", "--methods", "disc,sft", "--out", str(tmp_path)]) == 2
    assert "--methods" in capsys.readouterr().err


# --------------------------------------------------------------------------- matched retention (no Ray)


def _eval_suites(prob_values, followed, settings):
    """eval.json suites with per-item values: MCQ prob_correct (points) and IFEval inst_strict (1 instruction/prompt)."""
    import numpy as np

    from disc_ray.evaluation.stats import attach_intervals, per_item_table

    mcq = {"prob_correct": float(np.mean(prob_values)), "accuracy_ll": 50.0, "accuracy_gen": 0.0,
           "per_item": per_item_table([f"q{i}" for i in range(len(prob_values))], {"prob_correct": prob_values})}
    ifeval = {"inst_strict": float(np.mean(followed)),
              "per_item": per_item_table([f"p{i}" for i in range(len(followed))], {"inst_strict": followed},
                                         weights={"inst_strict": [1] * len(followed)})}
    return {"domain_mcq": attach_intervals(mcq, settings), "ifeval": attach_intervals(ifeval, settings)}


def test_matched_retention_compares_each_methods_best_run_within_the_budget(tmp_path):
    """ft learns most but forgets; disc keeps IFEval. At <= 2 points lost disc's best beats ft's best (which must
    use a small LR) outside the paired interval; at <= 5 ft's 1e-4 run (-3.75) is allowed and the gap closes."""
    import numpy as np

    from disc_ray.evaluation.stats import BootstrapConfig
    from disc_ray.reproduce import comparison_text, plot, run_rows, write_tables
    from disc_ray.tuning.selection import TrialRecord

    settings = BootstrapConfig()
    rng = np.random.default_rng(0)
    base = list(rng.uniform(15, 45, 48))
    followed = [100.0] * 40 + [0.0] * 40

    def forget(k):
        out = list(followed)
        for i in range(k):
            out[i] = 0.0
        return out

    plan = {("ft", 1e-5): (1.0, 0), ("ft", 1e-4): (16.0, 3), ("ft", 1e-3): (30.0, 16),
            ("disc", 1e-5): (0.5, 0), ("disc", 1e-4): (9.0, 1), ("disc", 1e-3): (15.0, 8)}
    records = []
    for i, ((method, lr), (gain, lost)) in enumerate(plan.items()):
        model_dir = tmp_path / f"run{i}"
        (model_dir / "eval").mkdir(parents=True)
        suites = _eval_suites(list(np.array(base) + gain + rng.normal(0, 1.5, 48)), forget(lost), settings)
        (model_dir / "eval" / "eval.json").write_text(json.dumps({"suites": suites}))
        records.append(TrialRecord(f"t{i}", {"objective.name": method, "train.lr": lr}, "completed",
                                   model_dir=str(model_dir)))
    outcome = {"baseline_eval": {"suites": _eval_suites(base, followed, settings)}, "records": records,
               "per_method": {"ft": "t1", "disc": "t5"}}
    rows = run_rows(outcome, "prob")
    ft_1e4 = next(r for r in rows if r["method"] == "ft" and r["lr"] == 1e-4)
    assert ft_1e4["ifeval_change"] == pytest.approx(-3.75) and ft_1e4["ifeval_change_ci_low"] < -3.75 < ft_1e4["ifeval_change_ci_high"]
    text = comparison_text(rows, outcome["per_method"], records, 5.0, "prob")
    budget_rows = [line for line in text.splitlines() if line.startswith("| lose <=")]
    assert "(lr 1e-05;" in budget_rows[0].split("|")[2] and "(lr 1e-04;" in budget_rows[0].split("|")[3]  # <= 2
    assert "(lr 1e-04;" in budget_rows[1].split("|")[2] and "(lr 1e-04;" in budget_rows[1].split("|")[3]  # <= 5
    assert "- <= 2 points: disc - ft = +" in text and "the questions separate them" in text.split("- <= 5")[0]
    assert "- <= 5 points: ft - disc = +" in text
    write_tables(rows, tmp_path)
    assert "| ft | 1e-04 | completed | " in (tmp_path / "results.md").read_text()
    paths = plot(rows, tmp_path, 5.0, "prob")
    assert [p.name for p in paths] == ["tradeoff.png", "retention_vs_lr.png", "frontier.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
