"""The reproduction: its presets (sweep files) through the sweep loader, its command line through the one config
loader, its inputs (BioASQ passages + synthetic documents), resuming, and the driver end to end on a tiny model
(the sweep, the per-method selection, the table with the original first, the plots)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from conftest import BIOASQ

from disc_ray.config import ConfigError
from disc_ray.reproduce import (
    ALL_METHODS,
    METHODS,
    PRESET_DIR,
    ReproduceConfig,
    experiment_dir,
    finished_runs,
    load_reproduce_config,
    main,
    run_reproduction,
    sweep_file,
    write_inputs,
)
from disc_ray.tuning.space import parse_sweep


def _sweep(argv, tmp_path):
    """The validated sweep a command runs (inputs written), without starting anything."""
    cfg, raw = load_reproduce_config(argv + ["--out", str(tmp_path)])
    inputs = write_inputs(BIOASQ, cfg.documents, cfg.synthetic_documents, experiment_dir(cfg, raw) / "inputs")
    return cfg, inputs, parse_sweep(sweep_file(cfg, raw, inputs))


def test_presets_are_sweep_files_that_the_sweep_loader_reads(tmp_path):
    assert {p.name for p in PRESET_DIR.glob("reproduce_*.yaml")} == {"reproduce_quick.yaml", "reproduce_full.yaml"}
    for path in PRESET_DIR.glob("reproduce_*.yaml"):  # without the reproduce section, a plain sweep file
        raw = yaml.safe_load(path.read_text())
        raw.pop("reproduce")
        assert parse_sweep(raw, str(path)).keys[:2] == ["objective.name", "train.lr"]
    quick_cfg, quick_inputs, quick = _sweep(["--quick"], tmp_path)
    full_cfg, full_inputs, full = _sweep(["--preset", "full"], tmp_path)
    for sweep in (quick, full):
        lrs = dict(zip(sweep.keys, (d.values for d in sweep.dimensions)))["train.lr"]
        assert len(lrs) >= 3 and max(lrs) / min(lrs) >= 10 and 1e-3 in lrs  # ft degraded at 1e-3 (2026-11-23)
        assert sweep.param_space()["objective.name"] == {"grid_search": list(METHODS)}
        assert sweep.selection.domain_metric == ("domain_mcq.prob_correct",)
        assert sweep.base.data.path and sweep.evaluation.mcq_path.endswith("questions.jsonl")
    # issue 19: every BioASQ passage plus synthetic documents, their probes asked per kind, 2 seeds
    assert full_inputs["kinds"]["bioasq"] == 208 and full_inputs["kinds"]["restated"] > 40 and full_inputs["kinds"]["single"] > 40
    assert full.param_space()["train.seed"] == {"grid_search": [0, 1]} and full.evaluation.mcq_limit == full_inputs["n_questions"]
    assert full.evaluation.limit >= 48 and full.settings.name == "reproduce-full"
    assert quick_inputs["kinds"]["restated"] > 0 and quick_inputs["kinds"]["single"] > 0  # a quick run shows both
    assert quick_cfg.documents < full_cfg.documents and "train.seed" not in quick.keys
    assert quick.evaluation.mcq_limit == quick_inputs["n_questions"] == 30


def test_inputs_join_bioasq_passages_and_synthetic_documents(tmp_path):
    inputs = write_inputs(BIOASQ, 5, 2, tmp_path)
    documents = [json.loads(line) for line in inputs["documents"].read_text().splitlines()]
    questions = [json.loads(line) for line in inputs["questions"].read_text().splitlines()]
    assert [d["source"] for d in documents] == ["bioasq"] * 5 + ["synthetic"] * 2 and all(d["text"] for d in documents)
    assert [q["meta"]["kind"] for q in questions[:5]] == ["bioasq"] * 5
    assert {q["meta"]["kind"] for q in questions[5:]} == {"restated", "single"}
    assert len({q["meta"]["id"] for q in questions}) == len(questions) == inputs["n_questions"]  # ids pair items
    assert questions[0]["meta"]["context"] == documents[0]["text"] and len(questions[0]["options"]) == 4
    before = inputs["questions"].stat().st_mtime_ns
    write_inputs(BIOASQ, 5, 2, tmp_path)  # a resume finds the same inputs and leaves them alone
    assert inputs["questions"].stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="fewer than the 100000"):
        write_inputs(BIOASQ, 100000, 0, tmp_path)


def test_command_line_keys_reach_the_sweep_file(tmp_path):
    cfg, _, sweep = _sweep(["--quick", "--lrs", "1e-4,1e-3", "--seeds", "0,1", "--methods", "disc,talr,lora",
                            "--documents", "3", "--synthetic-documents", "1", "--evaluation.limit", "8",
                            "--domain-metric", "ll", "--name", "mine", "--model", "smollm2-135m-instruct",
                            "--base.overrides.train.epochs", "2", "--sweep.num_cpus", "4"], tmp_path)
    assert cfg == ReproduceConfig(preset="quick", out=str(tmp_path), name="mine", model="smollm2-135m-instruct",
                                  methods=("disc", "talr", "lora"), lrs=(1e-4, 1e-3), seeds=(0, 1), documents=3,
                                  synthetic_documents=1, domain_metric="ll", evaluation={"limit": "8"},
                                  base={"overrides": {"train": {"epochs": "2"}}}, sweep={"num_cpus": "4"})
    assert sweep.param_space() == {"objective.name": {"grid_search": ["disc", "talr", "lora"]},
                                   "train.lr": {"grid_search": [1e-4, 1e-3]}, "train.seed": {"grid_search": [0, 1]}}
    assert sweep.evaluation.limit == 8 and sweep.evaluation.max_new_tokens == 128  # the rest of the preset's section
    assert sweep.base.train.epochs == 2 and sweep.base.train.batch_size == 1 and sweep.settings.num_cpus == 4
    assert sweep.selection.domain_metric == ("domain_mcq.accuracy_ll",)
    assert sweep.sweep_dir == tmp_path / "mine" and sweep.settings.name == "mine"
    own = tmp_path / "own.yaml"  # --config: a sweep file of one's own, its reproduce section as defaults
    raw = yaml.safe_load((PRESET_DIR / "reproduce_quick.yaml").read_text())
    own.write_text(yaml.safe_dump({**raw, "reproduce": {"documents": 2, "synthetic_documents": 0}}))
    cfg, _, sweep = _sweep(["--config", str(own), "--documents", "1"], tmp_path)
    assert (cfg.documents, cfg.synthetic_documents) == (1, 0) and sweep.settings.name == "reproduce-quick"
    cfg, inputs, _ = _sweep(["--quick", "--documents", "0"], tmp_path)  # valid with the preset's synthetic documents
    assert (cfg.documents, cfg.synthetic_documents) == (0, 4) and set(inputs["kinds"]) == {"restated", "single"}


@pytest.mark.parametrize("argv, message", [
    (["--lr", "1e-4"], "unknown config key 'lr' (did you mean 'lrs'?)"),
    (["--preset", "fulll"], "unknown preset 'fulll' (did you mean 'full'?)"),
    (["--quick", "--methods", "disc,sft"], "methods: expected distinct methods from ft,ft_kl,talr,lora,rephrase,cd_base,disc"),
    (["--quick", "--methods", "ft,ft"], "methods: expected distinct methods"),
    (["--quick", "--domain-metric", "f1"], "domain_metric must be one of prob, ll_norm, ll, gen"),
    (["--quick", "--documents", "100000"], "fewer than the 100000 asked for"),
    (["--quick", "--evaluation.limt", "8"], "unknown config key 'evaluation.limt' (did you mean 'evaluation.limit'?)"),
    (["--quick", "--lrs", "-1"], "lrs must be > 0"),
    (["--quick", "--documents", "0", "--synthetic-documents", "0"], "must be >= 0 and not both 0"),
    (["--config", "missing.yaml"], "reproduction sweep file not found: missing.yaml"),
])
def test_command_line_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_help_lists_every_key_with_its_default_and_docstring(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in ("preset", "config", "out", "name", "model", "methods", "lrs", "seeds", "documents",
                "synthetic_documents", "domain_metric", "bioasq", "evaluation", "selection"):
        assert f"--{key} " in text
    assert "--documents int (default 12)\n        BioASQ passages trained on" in text and "presets: full, quick" in text


def test_running_the_same_command_again_resumes_and_skips_finished_runs(tmp_path):
    """The first run stored its sweep file and finished one trial (export + eval.json); the same command finds a
    matching sweep (Tune restores it) and that trial is neither trained nor evaluated again. A changed command is
    refused, naming what changed."""
    from disc_ray.config import to_dict
    from disc_ray.tuning.driver import SWEEP_FILE, check_resume
    from disc_ray.tuning.trial import TrialContext, evaluate_trial, train_trial

    argv = ["--quick", "--documents", "2", "--synthetic-documents", "1"]
    _, _, first = _sweep(argv, tmp_path)
    first.sweep_dir.mkdir(parents=True, exist_ok=True)
    (first.sweep_dir / SWEEP_FILE).write_text(yaml.safe_dump(first.raw, sort_keys=False))  # as run_sweep stores it
    trial = first.trial_config({"objective.name": "disc", "train.lr": 1e-4}, "abc_00001")
    model_dir = first.sweep_dir / "runs" / "trial_abc_00001" / "model"
    (model_dir / "eval").mkdir(parents=True)
    (model_dir / "run.json").write_text(json.dumps({"config": to_dict(trial), "sweep_trial_complete": True}))
    (model_dir / "eval" / "eval.json").write_text(json.dumps(
        {"config": first.evaluation.to_dict(), "baseline": {"model": "original-dir"}, "suites": {"marker": {}}}))
    (first.sweep_dir / "runs" / "trial_abc_00002" / "model").mkdir(parents=True)  # interrupted: no eval.json yet
    assert finished_runs(first.sweep_dir) == [first.sweep_dir / "runs" / "trial_abc_00001"]

    _, _, again = _sweep(argv, tmp_path)
    check_resume(again)  # the same command: the stored sweep matches
    context = TrialContext(sweep=again, model_source="original-dir", baseline_dir="unused", drift_records=())
    out, summary = train_trial(again.trial_config({"objective.name": "disc", "train.lr": 1e-4}, "abc_00001"), context,
                               callback=None)  # would start Ray Train if it trained
    assert out == model_dir and summary["sweep_trial_complete"]
    assert evaluate_trial(model_dir, "abc_00001", context)["suites"] == {"marker": {}}  # would load a model
    _, _, changed = _sweep(argv + ["--lrs", "1e-4,3e-4,1e-3"], tmp_path)
    with pytest.raises(ConfigError, match="was started with different space"):
        check_resume(changed)


def test_select_only_never_evaluates_the_original(tmp_path):
    """--select-only / --report-only read what is on disk: without the original's evaluation (or with one made
    with other settings) they stop with one line instead of spending minutes evaluating it."""
    from disc_ray.tuning.driver import prepare_baseline

    _, _, sweep = _sweep(["--quick", "--documents", "2", "--synthetic-documents", "1"], tmp_path)
    with pytest.raises(ConfigError, match="no evaluation of the original with this sweep's settings"):
        prepare_baseline(sweep, "original-dir", evaluate=False)
    (sweep.sweep_dir / "baseline").mkdir(parents=True)
    (sweep.sweep_dir / "baseline" / "drift_references.jsonl").write_text("")
    (sweep.sweep_dir / "baseline" / "eval.json").write_text(json.dumps(
        {"config": {**sweep.evaluation.to_dict(), "limit": 999}, "model": "original-dir"}))
    with pytest.raises(ConfigError, match="no evaluation of the original"):
        prepare_baseline(sweep, "original-dir", evaluate=False)
    (sweep.sweep_dir / "baseline" / "eval.json").write_text(json.dumps(
        {"config": json.loads(json.dumps(sweep.evaluation.to_dict())), "model": "original-dir"}))
    assert prepare_baseline(sweep, "original-dir", evaluate=False) == (sweep.sweep_dir / "baseline", [])


def test_a_trial_that_failed_before_reporting_keeps_its_method_and_lr_in_the_tables(tmp_path):
    """Tune's Result of a trial whose process died at start (seen in the full preset: a worker killed while
    starting) has no config; its row must still say which method and LR failed, and the reproduction's tables
    must be written (report-only crashed on it)."""
    from ray.tune import Result

    from disc_ray.reproduce import run_rows
    from disc_ray.tuning.driver import trial_records

    _, _, sweep = _sweep(["--quick", "--documents", "2", "--synthetic-documents", "1"], tmp_path)
    failed = tmp_path / "trial_abc_00002"
    failed.mkdir()
    (failed / "params.json").write_text(json.dumps({"objective.name": "disc", "train.lr": 1e-4}))
    results = [Result(metrics=None, checkpoint=None, error=RuntimeError("The actor died unexpectedly"), path=str(failed)),
               Result(metrics=None, checkpoint=None, error=RuntimeError("no params either"), path=str(tmp_path / "trial_abc_00003"))]
    records = trial_records(results, sweep)
    assert [(r.trial_id, r.status, r.params) for r in records] == [
        ("abc_00002", "error", {"objective.name": "disc", "train.lr": 1e-4}),
        ("abc_00003", "error", {"objective.name": None, "train.lr": None})]
    assert records[0].note == "error: The actor died unexpectedly"
    # a trial interrupted mid-training (or still running when --report-only reads it) is unfinished, not stopped;
    # only a scheduler's reason makes a trial "stopped"
    _, _, budget = _sweep(["--quick", "--documents", "2", "--synthetic-documents", "1", "--drift.every_n_steps", "1",
                           "--scheduler.drift_budget.metric", "drift_kl", "--scheduler.drift_budget.max", "1.0"], tmp_path)
    partial = Result(metrics={"step": 20, "loss": 3.3}, checkpoint=None, error=None, path=str(tmp_path / "trial_abc_00006"))
    wrecked = Result(metrics={"step": 1, "drift_kl": 4.0}, checkpoint=None, error=None, path=str(tmp_path / "trial_abc_00007"))
    [interrupted] = trial_records([partial], sweep)
    assert (interrupted.status, interrupted.note) == ("unfinished", "unfinished: last report at step 20")
    [stopped] = trial_records([wrecked], budget)
    assert stopped.status == "stopped" and stopped.note.startswith("stopped at step 1: drift_kl 4.0000 > budget 1")
    rows = run_rows({"baseline_eval": {"suites": {}}, "records": records[::-1], "per_method": {}}, "prob")
    assert [(r["method"], r["lr"], r["status"]) for r in rows] == [("original", None, ""), ("disc", 1e-4, "error"),
                                                                    (None, None, "error")]


@pytest.fixture()
def ray_stopped_after():
    """The experiment starts a local Ray cluster (as the command does); later test modules start their own."""
    yield
    import ray

    ray.shutdown()


@pytest.mark.ray
def test_experiment_end_to_end_selects_per_method_by_the_papers_rule(tmp_path, tiny_model_dir, ray_stopped_after):
    """lr 3 wrecks the model at step 1 and the drift budget stops it (never selectable); lr 1e-9 changes nothing
    and keeps IFEval: the rule must pick it for each method. 4 passages + 1 synthetic document (5 probes)."""
    argv = ["--quick", "--documents", "4", "--synthetic-documents", "1", "--lrs", "1e-9,3.0", "--methods", "ft,disc",
            "--model", str(tiny_model_dir), "--out", str(tmp_path), "--name", "tiny", "--sweep.num_cpus", "6",
            "--drift.every_n_steps", "1", "--scheduler.drift_budget.metric", "drift_kl",
            "--scheduler.drift_budget.max", "1.0", "--evaluation.progress", "false", "--evaluation.limit", "4",
            "--evaluation.max_new_tokens", "16", "--evaluation.drift_num_prompts", "4",
            "--evaluation.drift_max_new_tokens", "16", "--evaluation.cache_dir", str(tmp_path / "cache")]
    outcome = run_reproduction(*load_reproduce_config(argv), log=lambda *_: None)
    experiment = tmp_path / "tiny"
    with (experiment / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["lr"]) for r in rows] == [("original", ""), ("ft", "1e-09"), ("ft", "3.0"),
                                                       ("disc", "1e-09"), ("disc", "3.0")]
    original = rows[0]
    assert original["mcq_ll"] and original["ifeval_inst_strict"] and float(original["drift_kl"]) < 1e-6
    assert all(original[f"mcq_prob_{kind}"] for kind in ("bioasq", "restated", "single"))  # per-kind scores
    for row in rows[1:]:
        gentle = row["lr"] == "1e-09"
        assert row["status"] == ("completed" if gentle else "stopped")
        assert row["selected"] == ("yes" if gentle else "")
        if gentle:  # evaluated on the same questions as the original, unchanged model: same scores, no drift
            assert row["mcq_ll"] == original["mcq_ll"] and float(row["ifeval_change"]) == 0.0
            assert float(row["mcq_prob_restated"]) == pytest.approx(float(original["mcq_prob_restated"]), abs=1e-3)
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
    assert METHODS == ("ft", "ft_kl", "disc") and set(ALL_METHODS) >= {"disc", "ft", "ft_kl", "lora", "talr"}
    evaluated = {p: p.stat().st_mtime_ns for p in experiment.glob("runs/*/model/eval/eval.json")}
    run_reproduction(*load_reproduce_config(argv + ["--report-only", "true"]), log=lambda *_: None)
    with (experiment / "results.csv").open() as f:  # report only: the same tables from the runs on disk, none rerun
        assert list(csv.DictReader(f)) == rows
    assert {p: p.stat().st_mtime_ns for p in experiment.glob("runs/*/model/eval/eval.json")} == evaluated


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
    same_lr = [line for line in text.split("## Methods at the same learning rate")[1].split("##")[0].splitlines()
               if line.startswith("| disc - ft |")]
    assert [line.split("|")[2].strip() for line in same_lr] == ["1e-05", "1e-04", "1e-03"]
    cells = [c.strip() for c in same_lr[2].split("|")[1:-1]]  # at 1e-3: disc gains 15 less, forgets 8 prompts less
    assert cells[2] == "1 vs 1" and cells[3].startswith("-1") and not cells[3].endswith("~")
    assert cells[-2].startswith("+10.00 [") and cells[-1] == "-"  # IFEval strict: +8 of 80 prompts; no loose recorded
    write_tables(rows, tmp_path)
    assert "| ft | 1e-04 | - | completed | " in (tmp_path / "results.md").read_text()
    paths = plot(rows, tmp_path, 5.0, "prob")
    assert [p.name for p in paths] == ["tradeoff.png", "retention_vs_lr.png", "frontier.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_seeds_are_averaged_per_item_before_the_rule_and_the_fact_table(tmp_path):
    """ft at 1e-4 has one lucky seed (+30 on restated, +0 on the other) and ft at 3e-4 two steady ones (+20, +20):
    the per-run rule takes the lucky run, the rule on seed means takes 3e-4 (mean +20 > +15). The fact table gives
    each configuration's seed-mean change per kind with a paired interval: restated moves, single does not."""
    import numpy as np

    from disc_ray.evaluation.stats import BootstrapConfig, ItemValues, attach_intervals, mean_over_runs, per_item_table
    from disc_ray.reproduce import comparison_text, run_rows
    from disc_ray.reproduce_outputs import configurations, fact_deltas
    from disc_ray.tuning.selection import TrialRecord

    settings = BootstrapConfig()
    rng = np.random.default_rng(1)
    kinds = ["restated"] * 30 + ["single"] * 30
    base = rng.uniform(15, 40, 60)

    def suites(restated_gain):
        prob = base + np.where(np.array(kinds) == "restated", restated_gain, 0.0) + rng.normal(0, 1.0, 60)
        by_kind = {k: {"prob_correct": float(prob[np.array(kinds) == k].mean())} for k in ("restated", "single")}
        mcq = {"prob_correct": float(prob.mean()), "by_kind": by_kind,
               "per_item": per_item_table([f"q{i}" for i in range(60)], {"prob_correct": list(prob)}, groups={"by_kind": kinds})}
        followed = [100.0] * 40 + [0.0] * 40
        ifeval = {"inst_strict": 50.0, "inst_loose": 50.0,
                  "per_item": per_item_table([f"p{i}" for i in range(80)], {"inst_strict": followed, "inst_loose": followed},
                                             weights={"inst_strict": [1] * 80, "inst_loose": [1] * 80})}
        return {"domain_mcq": attach_intervals(mcq, settings), "ifeval": attach_intervals(ifeval, settings)}

    plan = [(1e-4, 0, 30.0), (1e-4, 1, 0.0), (3e-4, 0, 20.0), (3e-4, 1, 20.0)]
    records = []
    for i, (lr, seed, gain) in enumerate(plan):
        model_dir = tmp_path / f"run{i}"
        (model_dir / "eval").mkdir(parents=True)
        (model_dir / "eval" / "eval.json").write_text(json.dumps({"suites": suites(gain)}))
        records.append(TrialRecord(f"t{i}", {"objective.name": "ft", "train.lr": lr, "train.seed": seed}, "completed",
                                   model_dir=str(model_dir)))
    outcome = {"baseline_eval": {"suites": suites(0.0)}, "records": records, "per_method": {"ft": "t0"}}
    rows = run_rows(outcome, "prob")
    configs = configurations(rows)
    assert [(c["lr"], c["seeds"]) for c in configs] == [(1e-4, [0, 1]), (3e-4, [0, 1])]
    lucky, steady = configs
    per_item = [r["scores"].domain_items.values for r in lucky["runs"]]
    assert lucky["scores"].domain == pytest.approx(float(np.mean((per_item[0] + per_item[1]) / 2)))
    assert lucky["scores"].domain_ci[0] < lucky["scores"].domain < lucky["scores"].domain_ci[1]
    assert fact_deltas(lucky, rows[0])["restated"]["delta"] == pytest.approx(15.0, abs=1.0)
    steady_deltas = fact_deltas(steady, rows[0])
    assert steady_deltas["restated"]["outside"] and steady_deltas["restated"]["delta"] == pytest.approx(20.0, abs=1.0)
    assert not steady_deltas["single"]["outside"] and steady_deltas["IFEval inst loose"]["delta"] == 0.0
    text = comparison_text(rows, outcome["per_method"], records, 5.0, "prob")
    assert "- ft: lr 1e-04 (seed 0):" in text.split("seed means")[0]  # the per-run rule: the lucky seed's run
    assert "- ft: lr 3e-04:" in text.split("seed means")[1].split("##")[0]  # on seed means: the steady rate
    fact_rows = [line for line in text.splitlines() if line.startswith("| ft | ")]
    assert fact_rows[1].startswith("| ft | 3e-04 | 2 | +2") and fact_rows[1].endswith("| yes |")
    assert "(lr 3e-04 (2 seeds);" in text  # matched retention compares the seed means too
    assert "same learning rate" not in text  # one method: nothing to pair

    a = ItemValues(("x", "y", "z"), np.array([1.0, 2.0, 3.0]))
    b = ItemValues(("z", "x"), np.array([5.0, 3.0]))
    mean = mean_over_runs([a, b])
    assert mean.ids == ("x", "z") and list(mean.values) == [2.0, 4.0]  # shared items, aligned by id
    with pytest.raises(ValueError, match="weigh the same items differently"):
        mean_over_runs([ItemValues(("x",), np.array([1.0]), np.array([2.0])), ItemValues(("x",), np.array([1.0]), np.array([3.0]))])
