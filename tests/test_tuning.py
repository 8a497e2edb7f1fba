"""Ray Tune sweeps: search-space validation, the selection rule and Pareto front, the searcher/scheduler
adapters, and a real sweep (tiny model, real Ray Tune + Ray Train) whose driver is killed and resumed."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from disc_ray.config import AdaptConfig, ConfigError, load_config
from disc_ray.evaluation.selection import RunScores
from disc_ray.tuning.selection import TrialRecord, judge_trial, pareto_front, select_trials
from disc_ray.tuning.space import load_sweep, parse_sweep
from disc_ray.tuning.sweep_config import SelectionConfig

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted(p for p in (REPO / "tune" / "spaces").glob("*.yaml") if not p.name.startswith("reproduce_"))
"""The sweep files tune/sweep.py runs; the reproduction presets (``reproduce_*.yaml``, with a ``reproduce:``
section) are read by jobs/reproduce.py and validated in test_reproduce.py."""


def minimal(**extra) -> dict:
    return {"space": {"train.lr": {"grid": [1e-5, 3e-5]}}, **extra}


# --------------------------------------------------------------------------- the sweep file


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_is_valid(path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    assert sweep.dimensions and set(sweep.param_space()) == set(sweep.keys)
    config = sweep.trial_config({d.key: d.values[0] for d in sweep.dimensions}, "abc_00000")
    assert config.run.name == "trial_abc_00000" and config.run.storage_path.endswith(f"{sweep.settings.name}/runs")


@pytest.mark.ray
def test_space_becomes_tune_domains_with_typed_values():
    from ray.tune.search.sample import Categorical, Float, Integer

    sweep = parse_sweep({
        "space": {"train.lr": {"loguniform": ["1e-6", "1e-4"]}, "objective.temperature": {"choice": [1, "2"]},
                  "split.num_splits": {"randint": [2, 9]}, "objective.name": {"choice": ["disc", "ft", "ft_kl"]}},
        "searcher": "random", "num_samples": 3})
    space = sweep.param_space()
    assert isinstance(space["train.lr"], Float) and (space["train.lr"].lower, space["train.lr"].upper) == (1e-6, 1e-4)
    assert isinstance(space["split.num_splits"], Integer)
    assert isinstance(space["objective.temperature"], Categorical)
    assert space["objective.temperature"].categories == [1.0, 2.0]  # typed by the config layer, not YAML strings
    grid = parse_sweep(minimal()).param_space()
    assert grid == {"train.lr": {"grid_search": [1e-5, 3e-5]}}


@pytest.mark.parametrize("raw,message", [
    (minimal(space={"train.lrr": {"grid": [1e-5]}}), "space: unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (minimal(space={"train.lr": {"grid": [1e-5, -1]}}), "space: train.lr must be > 0, got -1.0"),
    (minimal(space={"train.lr": {"gird": [1e-5]}}), "space: 'train.lr': unknown domain 'gird' (did you mean 'grid'?)"),
    (minimal(space={"train.lr": {"loguniform": [0, 1e-4]}}, searcher="random"), "space: 'train.lr': loguniform needs low > 0"),
    (minimal(space={"train.lr": {"uniform": [1e-4, 1e-5]}}, searcher="random"), "space: 'train.lr': uniform needs low < high"),
    (minimal(space={"split.strategy": {"choice": ["middle", "sentence_boundary"]}}, searcher="random"),
     "space: split.strategy: unknown strategy 'middle'"),
    (minimal(space={"split.strategy": {"uniform": [0, 1]}}, searcher="random"), "space: 'split.strategy': uniform needs a float key"),
    (minimal(space={"model.name_or_path": {"grid": ["a", "b"]}}), "space: 'model.name_or_path' cannot be swept"),
    (minimal(space={"train": {"grid": [1]}}), "space: key 'train' must be a dotted config key"),
    (minimal(space={"train.lr": 1e-5}), "space: 'train.lr' must be a mapping with one domain"),
    (minimal(space={"train.lr": {"loguniform": [1e-6, 1e-4]}}), "space: 'train.lr' uses loguniform, but searcher 'grid'"),
    (minimal(searcher="optuna"), "space: 'train.lr' uses grid, which searcher 'optuna' cannot enumerate"),
    (minimal(searcher="bayes"), "searcher must be one of ['grid', 'random', 'optuna']"),
    (minimal(max_concurrent_trials="many"), "max_concurrent_trials must be 'auto' or an integer >= 1"),
    (minimal(base={"overrides": {"train.lr": -3}}), "base: train.lr must be > 0, got -3.0"),
    (minimal(evaluation={"limt": 4}), "unknown config key 'evaluation.limt' (did you mean 'evaluation.limit'?)"),
    (minimal(selection={"rule": "best"}), "selection.rule must be one of ['paper', 'weighted']"),
    (minimal(selection={"rule": "weighted", "weights": {"domian": 1}}), "selection.weights.domian: unknown metric"),
    (minimal(selection={"retained_metrics": ["lm_eval:gsm8k.score"]}), "selection.retained_metrics: 'lm_eval:gsm8k.score' needs its suite"),
    (minimal(scheduler={"asha": {"metric": "loss"}}), "scheduler.asha.metric must be drift_kl or drift_nll"),
    (minimal(searcherr="grid"), "unknown config key 'searcherr' (did you mean 'searcher'?)"),
    ({"searcher": "grid"}, "space: the sweep file needs a non-empty 'space' mapping"),
])
def test_invalid_sweep_files_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_sweep(raw)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.ray
def test_invalid_space_fails_on_the_command_line_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"space": {"train.lr": {"grid": [1e-5, -1]}}}))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "tune" / "sweep.py"), "--config", str(bad)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines == ["error: space: train.lr must be > 0, got -1.0"], result.stderr[-2000:]
    assert "Ray" not in result.stdout + result.stderr and time.perf_counter() - started < 60


def test_concurrency_is_planned_from_the_clusters_resources():
    from disc_ray.tuning.driver import TRIAL_SLOT, plan_concurrency, slot_share, trial_demand

    sweep = parse_sweep(minimal(base={"overrides": {"workers.num_workers": 2, "data.concurrency": 1}},
                                resources={"trial_cpus": 1}))
    assert trial_demand(sweep) == {"CPU": 4.0}  # trial process + 2 workers + 1 Ray Data task
    assert plan_concurrency({"CPU": 8.0}, trial_demand(sweep)) == 2
    assert plan_concurrency({"CPU": 3.0}, trial_demand(sweep)) == 0
    # the local cluster's trial slot: each trial holds its share, so no more than `concurrency` fit at once
    assert slot_share({"CPU": 8.0}, 2) == {}  # a cluster joined by address has no slot
    for concurrency in (1, 2, 3, 7):
        share = slot_share({"CPU": 8.0, TRIAL_SLOT: 1.0}, concurrency)[TRIAL_SLOT]
        assert concurrency * share <= 1.0 < (concurrency + 1) * share
    gpu = parse_sweep(minimal(base={"overrides": {"workers.num_workers": 2, "workers.use_gpu": True}}))
    assert plan_concurrency({"CPU": 64.0, "GPU": 8.0}, trial_demand(gpu)) == 4


# --------------------------------------------------------------------------- selection (pure)


BASELINE = RunScores("original", 50.0, "domain_mcq.accuracy_ll", {"ifeval.inst_strict": 40.0, "lm_eval:gsm8k.score": 30.0})


def record(trial_id, domain, ifeval, gsm8k, drift_kl=0.05, status="completed"):
    return TrialRecord(trial_id, {"train.lr": 1e-5}, status, domain=domain, domain_metric="domain_mcq.accuracy_ll",
                       skills={"ifeval.inst_strict": ifeval, "lm_eval:gsm8k.score": gsm8k}, drift_kl=drift_kl, drift_nll=1.0)


def test_paper_rule_picks_best_domain_score_within_the_drop_on_each_skill():
    records = [
        record("a", 58.0, 39.0, 29.0),               # eligible
        record("b", 75.0, 30.0, 30.0),               # best domain, but IFEval -10: not eligible
        record("c", 66.0, 35.5, 26.0),               # eligible (drops 4.5, 4.0): the answer
        record("d", 70.0, 40.0, 24.0),               # GSM8K -6: not eligible
        record("e", None, None, None, status="stopped"),
    ]
    outcome = select_trials(records, BASELINE, SelectionConfig(max_drop=5.0))
    assert outcome.best == "c"
    by_id = {r.trial_id: r for r in records}
    assert [r.trial_id for r in records if r.eligible] == ["a", "c"]
    assert by_id["b"].reason == "ifeval.inst_strict dropped 10.0 > 5 points"
    assert by_id["d"].reason == "lm_eval:gsm8k.score dropped 6.0 > 5 points"
    assert by_id["c"].selected and not by_id["b"].selected
    assert by_id["c"].score == 66.0 and by_id["b"].score == pytest.approx(75.0 - 10.0 * 5.0)  # penalty per point past D
    # Pareto front of (domain, worst retained change): b (75, -10), d (70, -6), c (66, -4.5), a (58, -1)
    assert {r.trial_id for r in records if r.pareto} == {"a", "b", "c", "d"}
    # a stricter D changes the answer to the only trial within it
    assert select_trials(records, BASELINE, SelectionConfig(max_drop=2.0)).best == "a"


def test_paper_rule_with_a_drift_budget_and_ties():
    records = [record("a", 60.0, 40.0, 30.0, drift_kl=0.02), record("b", 64.0, 39.0, 30.0, drift_kl=0.30),
               record("c", 60.0, 38.0, 30.0, drift_kl=0.01)]
    outcome = select_trials(records, BASELINE, SelectionConfig(max_drop=5.0, max_drift_kl=0.1))
    assert outcome.best == "a"  # b is over the drift budget; a and c tie on domain, a drops less
    assert records[1].reason == "drift KL 0.3000 > 0.1 nats/token"
    assert select_trials(records, BASELINE, SelectionConfig(max_drop=5.0)).best == "b"


def test_weighted_rule_and_pareto_front():
    spec = SelectionConfig(rule="weighted", weights={"domain": 1.0, "ifeval.inst_strict": 2.0, "drift_kl": -10.0})
    records = [record("a", 60.0, 40.0, 30.0, drift_kl=0.1),   # 10 + 0 - 1 = 9
               record("b", 75.0, 30.0, 30.0, drift_kl=0.2),   # 25 - 20 - 2 = 3
               record("c", 58.0, 41.0, 30.0, drift_kl=0.0)]   # 8 + 2 - 0 = 10
    outcome = select_trials(records, BASELINE, spec)
    assert outcome.best == "c" and [r.score for r in records] == pytest.approx([9.0, 3.0, 10.0])
    assert pareto_front({"p": (0, 1), "q": (1, 0), "r": (0, 0), "s": (1, 1)}) == {"s"}
    assert pareto_front({"p": (0, 2), "q": (1, 1), "r": (2, 0), "s": (0.5, 0.5)}) == {"p", "q", "r"}


def test_no_eligible_trial_selects_nothing():
    judgement = judge_trial(RunScores("x", None, None, {}), BASELINE, None, None, SelectionConfig())
    assert not judgement.eligible and judgement.score is None
    assert select_trials([record("a", 80.0, 10.0, 30.0)], BASELINE, SelectionConfig()).best is None


# --------------------------------------------------------------------------- searcher and scheduler adapters


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # Tune's trial actors import the trainable by module name: let them find this test module
    tests_dir = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _stub_trial(config):
    """Reports drift every step like a training run, then a final score like the evaluation."""
    from ray import tune

    for step in range(1, 5):
        tune.report({"step": step, "loss": 1.0, "drift_kl": config["train.lr"] * 1e4 * step})
    tune.report({"step": 4, "evaluated": 1, "drift_kl": config["train.lr"] * 4e4, "sweep_score": -config["train.lr"] * 1e4})


@pytest.mark.ray
def test_optuna_and_asha_adapters_in_a_tune_run(local_ray, tmp_path):
    from ray import tune

    from disc_ray.tuning.driver import build_scheduler, build_searcher, lenient_metric_checking

    sweep = parse_sweep({"space": {"train.lr": {"loguniform": [1e-6, 1e-3]}}, "searcher": "optuna", "num_samples": 6,
                         "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2, "max_t": 4}}, "seed": 3})
    searcher, scheduler = build_searcher(sweep), build_scheduler(sweep)
    tuner = tune.Tuner(_stub_trial, param_space=sweep.param_space(),
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=6, max_concurrent_trials=1),
                       run_config=tune.RunConfig(name="stub", storage_path=str(tmp_path), verbose=0))
    with lenient_metric_checking():
        results = tuner.fit()
    assert "TUNE_DISABLE_STRICT_METRIC_CHECKING" not in os.environ
    assert not results.errors
    finished = [r for r in results if r.metrics.get("evaluated")]
    stopped = [r for r in results if not r.metrics.get("evaluated")]
    assert stopped, "ASHA stopped no trial although later trials drift more at the same step"
    assert all(r.metrics["step"] < 4 for r in stopped)
    study_values = [t.value for t in searcher._ot_study.trials if t.value is not None]
    assert sorted(study_values) == sorted(r.metrics["sweep_score"] for r in finished)  # Optuna learned from final scores only


# --------------------------------------------------------------------------- a real sweep, killed and resumed


def write_sweep_file(tmp_path: Path, model_dir: Path) -> Path:
    """3 trials, 2 at a time (6 logical CPUs, each trial 1 + 1 worker + 1 data CPU). Drift is measured after every
    step and the budget is 1 nat/token: lr 1 and 3 wreck the model at step 1 and are stopped; lr 1e-9 changes
    nothing, keeps every skill, and is the only trial the paper rule can select."""
    spec = {
        "sweep": {"name": "known-answer", "storage_path": str(tmp_path / "sweeps"), "num_cpus": 6},
        "base": {"overrides": {"model.name_or_path": str(model_dir), "data.synthetic_documents": 6, "data.max_length": 256,
                               "workers.num_workers": 1, "train.max_steps": 2}},
        "space": {"train.lr": {"grid": [1.0, 1.0e-9, 3.0]}},
        "searcher": "grid",
        "max_concurrent_trials": "auto",
        "drift": {"every_n_steps": 1},
        "evaluation": {"suites": ["domain_mcq", "ifeval", "drift"], "limit": 4, "mcq_modes": ["ll"], "max_new_tokens": 16,
                       "drift_num_prompts": 4, "drift_max_new_tokens": 16, "progress": False,
                       "cache_dir": str(tmp_path / "cache")},
        "selection": {"rule": "paper", "max_drop": 5, "domain_metric": "domain_mcq.accuracy_ll",
                      "retained_metrics": ["ifeval.inst_strict"]},
        "scheduler": {"drift_budget": {"metric": "drift_kl", "max": 1.0}},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def terminated_trials(sweep_dir: Path) -> set[str]:
    """Trials Tune's saved experiment state records as finished."""
    done = set()
    for state_file in sweep_dir.glob("experiment_state-*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        for entry in state.get("trial_data", []):
            trial = json.loads(entry[0])
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def trial_spans(sweep_dir: Path, since: float) -> list[tuple[float, float]]:
    """(start, end) in seconds of each trial started after ``since``: from its "started" event to its last Tune
    report or its last event, whichever is later (Tune's report timestamps are whole seconds)."""
    from disc_ray.tuning.trial import read_trial_log

    events = [e for e in read_trial_log(sweep_dir) if e["time"] >= since]
    spans = []
    for trial_id in {e["trial_id"] for e in events if e["event"] == "started"}:
        start = min(e["time"] for e in events if e["trial_id"] == trial_id and e["event"] == "started")
        end = max(e["time"] for e in events if e["trial_id"] == trial_id)
        for line in (sweep_dir / f"trial_{trial_id}" / "result.json").read_text().splitlines():
            end = max(end, float(json.loads(line)["timestamp"]))
        spans.append((start, end))
    return spans


@pytest.mark.ray
def test_sweep_selects_the_known_trial_and_resumes_without_rerunning_finished_trials(tmp_path, tiny_model_dir):
    from disc_ray.tuning.trial import read_trial_log

    sweep_file = write_sweep_file(tmp_path, tiny_model_dir)
    sweep_dir = tmp_path / "sweeps" / "known-answer"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, str(REPO / "tune" / "sweep.py"), "--config", str(sweep_file)]

    # first driver: killed (with the local Ray cluster it started) once Tune has recorded a finished trial
    log_file = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while time.time() < deadline and not terminated_trials(sweep_dir):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    finished_before_kill = terminated_trials(sweep_dir)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert finished_before_kill, "no trial finished before the deadline"
    assert not (sweep_dir / "trials.csv").exists()

    # second driver: same command, resumes the sweep one trial at a time (Tune's own limit covers new trials only;
    # the restored ones are held to it by the cluster's trial slot)
    resumed_at = time.time()
    second = subprocess.run(command + ["--resume", "--max_concurrent_trials", "1"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the sweep" in second.stdout and "up to 1 trial(s) at once" in second.stdout
    spans = sorted(trial_spans(sweep_dir, since=resumed_at))
    assert len(spans) == 3 - len(finished_before_kill), spans
    assert all(end <= next_start + 1.0 for (_, end), (next_start, _) in zip(spans, spans[1:])), spans

    starts = [e["trial_id"] for e in read_trial_log(sweep_dir) if e["event"] == "started"]
    for trial_id in finished_before_kill:
        assert starts.count(trial_id) == 1, f"finished trial {trial_id} ran again: {starts}"
    assert len(set(starts)) == 3

    with (sweep_dir / "trials.csv").open() as f:
        rows = {float(row["train.lr"]): row for row in csv.DictReader(f)}
    assert set(rows) == {1.0, 1e-9, 3.0}
    gentle, wrecked = rows[1e-9], [rows[1.0], rows[3.0]]
    # the known answer: the gentle trial trained, was evaluated, kept its skills, and is selected
    assert gentle["status"] == "completed" and gentle["selected"] == "True" and gentle["eligible"] == "True"
    assert float(gentle["drift_kl"]) < 1e-3 and int(gentle["steps"]) == 2
    for row in wrecked:  # stopped by the drift budget on a drift measured during training
        assert row["status"] == "stopped" and row["selected"] == "False" and row["domain_score"] == ""
        assert float(row["drift_kl"]) > 1.0 and row["reason"].startswith("stopped at step")
    # the selection is what the rule says on the table's own numbers
    baseline = json.loads((sweep_dir / "baseline" / "eval.json").read_text())
    base_skill = baseline["suites"]["ifeval"]["inst_strict"]
    eligible = [r for r in rows.values() if r["status"] == "completed"
                and base_skill - float(r["ifeval.inst_strict"]) <= 5 + 1e-9]
    best = max(eligible, key=lambda r: float(r["domain_score"]))
    assert best["trial_id"] == gentle["trial_id"]

    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["selected"] == gentle["trial_id"] and gentle["trial_id"] in summary["pareto"]
    markdown = (sweep_dir / "trials.md").read_text()
    assert f"**{gentle['trial_id']}** (selected)" in markdown and all(r["trial_id"] in markdown for r in rows.values())
    assert (sweep_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    selected = load_config(AdaptConfig, sweep_dir / "selected.yaml")
    assert math.isclose(selected.train.lr, 1e-9) and selected.run.name == f"trial_{gentle['trial_id']}"
    # the exported model and its evaluation against the original are where the table says
    model_dir = Path(gentle["model_dir"])
    assert (model_dir / "model.safetensors").exists() and (model_dir / "eval" / "eval.json").exists()
    assert json.loads((model_dir / "eval" / "eval.json").read_text())["baseline"]["model"] == str(tiny_model_dir)
    # a finished trial's training checkpoints are deleted once it is exported (sweep.keep_checkpoints: false);
    # a trial stopped mid-run keeps the checkpoint its drift was measured on
    def checkpoints(run_dir: Path) -> list[Path]:
        return [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]

    assert (model_dir.parent / "export" / "model.safetensors").exists() and not checkpoints(model_dir.parent)
    assert all(checkpoints(sweep_dir / "runs" / f"trial_{row['trial_id']}") for row in wrecked)


def test_sweep_help_lists_every_sweep_file_key_with_its_default(capsys):
    from disc_ray.tuning.driver import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "--selection.max_drop float (default 5.0)" in printed and "--sweep.name str (default 'disc-sweep')" in printed
    assert "--drift.every_n_steps int | None (default None)" in printed and "--searcher str (default 'grid')" in printed
