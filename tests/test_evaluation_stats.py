"""Uncertainty and continuous scores: bootstrap intervals (checked against the normal approximation and
by hand), paired vs unpaired deltas, item pairing by id, the lenient generation parse, the continuous MCQ
scores by hand, the selection rule's "lead outside the interval" flag and eval.md's interval columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from disc_ray.evaluation.data import MCQItem
from disc_ray.evaluation.mcq import continuous_scores, summarize_mcq
from disc_ray.evaluation.prompts import parse_answer_lenient
from disc_ray.evaluation.selection import RunScores, describe_lead, run_scores, select_best
from disc_ray.evaluation.stats import (BootstrapConfig, ItemValues, attach_intervals, bootstrap_interval, compare,
                                       compare_suites, paired_delta_interval, per_item_table, suite_items,
                                       unpaired_delta_interval)

SETTINGS = BootstrapConfig(n_resamples=4000, seed=3)


def _bernoulli(n: int, p: float, seed: int) -> np.ndarray:
    return 100.0 * (np.random.default_rng(seed).random(n) < p)


# --------------------------------------------------------------------------- intervals


def test_interval_contains_the_estimate_and_matches_the_normal_approximation():
    values = _bernoulli(400, 0.4, seed=1)
    low, high = bootstrap_interval(values, settings=SETTINGS)
    mean = values.mean()
    assert low < mean < high
    # independent check: the normal approximation's half-width 1.96 * sd / sqrt(n) (n = 400, so close)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_interval_shrinks_with_more_items_and_is_fixed_by_the_seed():
    small = bootstrap_interval(_bernoulli(50, 0.5, seed=2), settings=SETTINGS)
    large = bootstrap_interval(_bernoulli(800, 0.5, seed=2), settings=SETTINGS)
    assert (large[1] - large[0]) < 0.4 * (small[1] - small[0])  # ~ sqrt(50 / 800) = 0.25
    assert bootstrap_interval(_bernoulli(50, 0.5, seed=2), settings=SETTINGS) == small
    continuous = np.random.default_rng(3).uniform(0, 100, 50)  # 0/1 items land on a grid; these do not
    first = bootstrap_interval(continuous, settings=SETTINGS)
    other_seed = bootstrap_interval(continuous, settings=BootstrapConfig(n_resamples=4000, seed=4))
    assert other_seed != first and other_seed[1] - other_seed[0] == pytest.approx(first[1] - first[0], rel=0.2)


def test_constant_values_give_a_zero_width_interval_and_no_items_none():
    assert bootstrap_interval([100.0] * 12) == (100.0, 100.0)
    assert bootstrap_interval([]) is None


def test_ratio_metric_resamples_prompts_whole():
    # IFEval instruction level: 100 x followed per prompt over instructions per prompt
    followed = np.array([2, 0, 1, 3, 1, 0, 2, 1] * 10, dtype=float)
    counts = np.array([2, 1, 2, 3, 1, 2, 3, 1] * 10, dtype=float)
    low, high = bootstrap_interval(100 * followed, counts, settings=SETTINGS)
    point = 100 * followed.sum() / counts.sum()
    assert point == pytest.approx(100 * 10 / 15)
    assert low < point < high
    # a cluster bootstrap is not the per-instruction one: the flat 0/1 list gives a different (here narrower) width
    flat = np.concatenate([[100.0] * int(f) + [0.0] * int(c - f) for f, c in zip(followed, counts)])
    flat_low, flat_high = bootstrap_interval(flat, settings=SETTINGS)
    assert flat.mean() == pytest.approx(point)
    assert abs((high - low) - (flat_high - flat_low)) > 0.1


def test_paired_interval_is_narrower_than_unpaired_for_correlated_runs():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(50, 25, size=200)  # item difficulty dominates both runs' scores
    run_a = difficulty + rng.normal(2.0, 3.0, size=200)
    run_b = difficulty + rng.normal(0.0, 3.0, size=200)
    paired = paired_delta_interval(run_a, run_b, settings=SETTINGS)
    unpaired = unpaired_delta_interval(run_a, run_b, settings=SETTINGS)
    delta = run_a.mean() - run_b.mean()
    assert paired[0] < delta < paired[1] and unpaired[0] < delta < unpaired[1]
    assert (paired[1] - paired[0]) < 0.3 * (unpaired[1] - unpaired[0])
    assert paired[0] > 0 and unpaired[0] < 0  # only the paired comparison separates the runs


def test_paired_ratio_delta_matches_the_difference_of_ratios():
    counts = np.array([1, 2, 3, 2] * 20, dtype=float)
    a = 100 * np.array([1, 2, 3, 1] * 20, dtype=float)
    b = 100 * np.array([1, 1, 2, 1] * 20, dtype=float)
    low, high = paired_delta_interval(a, b, counts, settings=SETTINGS)
    delta = a.sum() / counts.sum() - b.sum() / counts.sum()
    assert delta == pytest.approx(100 * (7 - 5) / 8)  # per block of 4 prompts: 7 vs 5 of 8 instructions
    assert low < delta < high and low > 0


def test_compare_pairs_items_by_id_whatever_their_order():
    rng = np.random.default_rng(7)
    ids = tuple(f"q{i}" for i in range(60))
    a = ItemValues(ids, rng.normal(60, 20, 60))
    b = ItemValues(ids, a.values - rng.normal(3, 2, 60))
    shuffled = rng.permutation(60)
    b_shuffled = ItemValues(tuple(ids[i] for i in shuffled), b.values[shuffled])
    assert compare(a, b, SETTINGS) == compare(a, b_shuffled, SETTINGS)
    partial = ItemValues(ids[:30] + ("extra",), np.concatenate([b.values[:30], [0.0]]))
    result = compare(a, partial, SETTINGS)
    assert result["n"] == 30 and result["delta"] == pytest.approx(a.values[:30].mean() - b.values[:30].mean())
    assert compare(a, ItemValues(("x",), np.array([1.0])), SETTINGS) is None
    few = compare(ItemValues(ids[:3], a.values[:3] + 50), ItemValues(ids[:3], a.values[:3]), SETTINGS)
    assert few["ci"] == [pytest.approx(50.0)] * 2 and not few["outside"]  # 3 items: reported, never claimed


# --------------------------------------------------------------------------- continuous MCQ scores


def test_continuous_scores_by_hand():
    normalized = [-1.0, -1.5, -0.8, -2.0]  # nats per byte; the correct option is index 0
    scores = continuous_scores(normalized, 0)
    expected_p = math.exp(-1.0) / sum(math.exp(v) for v in normalized)
    assert scores["prob_correct"] == pytest.approx(100 * expected_p)
    assert scores["margin"] == pytest.approx(-1.0 - (-0.8))
    assert continuous_scores([-3.0, -1.0], 1)["margin"] == pytest.approx(2.0)
    assert continuous_scores([-1e4, 0.0], 1)["prob_correct"] == pytest.approx(100.0)  # no overflow


def test_summarize_mcq_keeps_per_item_values_and_per_kind_continuous_scores():
    items = [MCQItem("q%d" % i, ("a", "b"), 0, kind, item_id=f"id{i}")
             for i, kind in enumerate(("restated", "restated", "single", "single"))]
    records = [dict(correct_ll=ok, correct_ll_norm=ok, prob_correct=p, margin=m)
               for ok, p, m in ((True, 80.0, 0.5), (False, 30.0, -0.2), (True, 60.0, 0.1), (True, 90.0, 0.9))]
    metrics = summarize_mcq(items, records)
    assert metrics["prob_correct"] == pytest.approx(65.0) and metrics["margin"] == pytest.approx(0.325)
    assert metrics["by_kind"]["restated"]["prob_correct"] == pytest.approx(55.0)
    per_item = metrics["per_item"]
    assert per_item["ids"] == ["id0", "id1", "id2", "id3"]
    assert per_item["values"]["accuracy_ll"] == [100.0, 0.0, 100.0, 100.0]
    assert per_item["groups"]["by_kind"] == ["restated", "restated", "single", "single"]
    attach_intervals(metrics, SETTINGS)
    low, high = metrics["ci"]["prob_correct"]
    assert low <= 65.0 <= high and low >= 30.0 and high <= 90.0
    assert metrics["by_kind"]["single"]["ci"]["prob_correct"][0] >= 60.0
    restated = suite_items({"domain_mcq": metrics}, "domain_mcq.by_kind.restated.prob_correct")
    assert restated.ids == ("id0", "id1") and list(restated.values) == [80.0, 30.0]
    # a baseline 10 points lower on the restated items only: the per-kind paired deltas say so
    lower = [dict(r, prob_correct=r["prob_correct"] - (10.0 if i < 2 else 0.0)) for i, r in enumerate(records)]
    deltas = compare_suites({"domain_mcq": metrics}, {"domain_mcq": summarize_mcq(items, lower)}, SETTINGS)["domain_mcq"]
    assert deltas["by_kind.restated.prob_correct"]["delta"] == pytest.approx(10.0)
    assert deltas["by_kind.restated.prob_correct"]["n"] == 2 and deltas["by_kind.single.prob_correct"]["delta"] == 0.0
    assert deltas["prob_correct"]["delta"] == pytest.approx(5.0) and deltas["accuracy_ll"]["delta"] == 0.0


@pytest.mark.parametrize("text,expected", [
    ("<answer>C</answer>", 2),  # the strict tag first
    ("B. 24", 1),  # the 135M default's answer style
    ("b", 1), ("(D)", 3), ("2", 1), ("Answer: (A)", 0), ("The answer is C.", 2), ("option D", 3),
    ("24", 1),  # the option's text
    ("I think the right value is 36 here", 2),
    ("A number of studies", None),  # an article is not a letter
    ("the answer is a protein", None),
    ("E", None), ("5", None), ("Paris", None), ("", None),
])
def test_lenient_parse(text, expected):
    assert parse_answer_lenient(text, ["12", "24", "36", "48"]) == expected


def test_lenient_parse_prefers_the_longer_option_text():
    options = ["kidney", "liver", "liver cancer", "lung"]
    assert parse_answer_lenient("It causes liver cancer in mice.", options) == 2
    assert parse_answer_lenient("The liver.", options) == 1


# --------------------------------------------------------------------------- selection and eval.md


def _suites(values, ifeval_hits, ids=None):
    ids = ids or [f"q{i}" for i in range(len(values))]
    mcq = {"prob_correct": float(np.mean(values)), "per_item": per_item_table(ids, {"prob_correct": values})}
    counts = [1] * len(ifeval_hits)
    ifeval = {"inst_strict": float(np.mean(ifeval_hits)),
              "per_item": per_item_table([f"p{i}" for i in range(len(counts))], {"inst_strict": ifeval_hits},
                                         weights={"inst_strict": counts})}
    return {"domain_mcq": attach_intervals(mcq, SETTINGS), "ifeval": attach_intervals(ifeval, SETTINGS)}


def test_selection_flags_whether_the_lead_is_outside_the_paired_interval():
    rng = np.random.default_rng(11)
    base = rng.uniform(10, 90, 100)
    skill = list(100.0 * (rng.random(80) < 0.5))
    metrics = ("domain_mcq.prob_correct",), ("ifeval.inst_strict",)
    baseline = run_scores("original", _suites(list(base), skill), *metrics)
    clear = run_scores("clear", _suites(list(base + 8 + rng.normal(0, 2, 100)), skill), *metrics)
    close = run_scores("close", _suites(list(base + 7.9 + rng.normal(0, 2, 100)), skill), *metrics)
    behind = run_scores("behind", _suites(list(base + rng.normal(0, 2, 100)), skill), *metrics)
    assert clear.domain_ci[0] < clear.domain < clear.domain_ci[1]
    selection = select_best([clear, behind], baseline, settings=SETTINGS)
    assert selection.best == "clear" and selection.lead["runner_up"] == "behind" and selection.lead["outside"]
    assert selection.lead["delta"] == pytest.approx(clear.domain - behind.domain)
    best, runner_up = sorted([clear, close], key=lambda r: -r.domain)
    tight = select_best([clear, close], baseline, settings=SETTINGS)
    assert tight.best == best.name and tight.lead["runner_up"] == runner_up.name and not tight.lead["outside"]
    assert "do not separate" in describe_lead(tight.lead) and "support it" in describe_lead(selection.lead)
    assert select_best([clear], baseline).lead is None  # no runner-up
    assert selection.verdict("clear").drop_cis["ifeval.inst_strict"]["delta"] == 0.0


def test_selection_without_per_item_values_has_no_lead():
    selection = select_best([RunScores("a", 50.0, "m", {"s": 40.0}), RunScores("b", 40.0, "m", {"s": 40.0})],
                            RunScores("base", 30.0, "m", {"s": 40.0}))
    assert selection.best == "a" and selection.lead is None


def test_eval_markdown_shows_intervals_and_paired_deltas():
    from disc_ray.evaluation.runner import compute_deltas, format_markdown

    rng = np.random.default_rng(2)
    base = rng.uniform(20, 60, 50)
    run = _suites(list(base + 15), [100.0, 0.0] * 10)
    original = _suites(list(base), [100.0, 0.0] * 10)
    record = dict(model="m", name="run", backend="hf", seed=0, suites=run, bootstrap=SETTINGS.as_dict(),
                  baseline={"model": "o", "suites": original}, deltas=compute_deltas(run, original),
                  delta_ci=compare_suites(run, original, SETTINGS))
    assert record["delta_ci"]["domain_mcq"]["prob_correct"]["ci"] == [pytest.approx(15.0)] * 2  # every item +15
    text = format_markdown(record)
    lo, hi = run["domain_mcq"]["ci"]["prob_correct"]
    assert f"| domain_mcq | prob_correct | {run['domain_mcq']['prob_correct']:.2f} [{lo:.2f}, {hi:.2f}] |" in text
    assert "+15.00 [+15.00, +15.00] *" in text
    assert "| ifeval | inst_strict | 50.00 [" in text and "+0.00 [+0.00, +0.00] |" in text
    assert "seed 3" in text and "4000 resamples" in text


def test_report_with_per_item_values_shows_intervals_and_the_lead(tmp_path):
    import json

    from disc_ray.evaluation.report import write_report

    rng = np.random.default_rng(4)
    base = rng.uniform(10, 80, 60)
    skill = [100.0, 0.0, 100.0] * 20
    original = _suites(list(base), skill)
    folders = []
    for name, gain, noise in (("lr1", 2.0, 1.0), ("lr2", 12.0, 8.0), ("lr3", 11.5, 8.0)):
        folder = tmp_path / name
        folder.mkdir()
        record = {"name": name, "model": f"/runs/{name}", "suites": _suites(list(base + gain + rng.normal(0, noise, 60)), skill),
                  "bootstrap": SETTINGS.as_dict(), "config": {"max_drop": 5.0, "domain_metrics": ["domain_mcq.prob_correct"]},
                  "baseline": {"model": "/models/original", "suites": original}}
        (folder / "eval.json").write_text(json.dumps(record))
        folders.append(folder)
    result = write_report(folders, tmp_path / "report")
    table = (tmp_path / "report" / "report.md").read_text()
    assert result["best"] in ("lr2", "lr3")
    assert "domain (domain_mcq.prob_correct) [95% CI]" in table and "domain change [paired CI]" in table
    assert "Lead over the runner-up" in table and "do not separate" in table  # lr2 vs lr3: ~0.5 points apart, noisy
    assert "(+0.00 [+0.00, +0.00])" in table  # IFEval unchanged, paired change exactly 0
    lo, hi = original["domain_mcq"]["ci"]["prob_correct"]
    assert f"{original['domain_mcq']['prob_correct']:.2f} [{lo:.2f}, {hi:.2f}]" in table
    assert (tmp_path / "report" / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_tables_carry_intervals_and_the_selected_trials_lead(tmp_path):
    import csv

    from disc_ray.tuning.outputs import write_outputs
    from disc_ray.tuning.selection import TrialRecord, select_trials
    from disc_ray.tuning.sweep_config import SelectionConfig

    rng = np.random.default_rng(9)
    base = rng.uniform(10, 80, 80)
    skill = [100.0, 0.0] * 40
    metrics = ("domain_mcq.prob_correct",), ("ifeval.inst_strict",)
    baseline = run_scores("original", _suites(list(base), skill), *metrics)
    records = []
    for trial_id, gain, lost in (("a", 10.0, 0), ("b", 3.0, 0), ("c", 30.0, 20)):
        hurt = list(skill)
        for i in range(lost):  # c forgets 20 of the 40 followed instructions: -25 points, outside 5
            hurt[2 * i] = 0.0
        record = TrialRecord(trial_id, {"train.lr": 1e-4}, "completed", drift_kl=0.01)
        record.take_scores(run_scores(trial_id, _suites(list(base + gain + rng.normal(0, 1, 80)), hurt), *metrics))
        records.append(record)
    selection = select_trials(records, baseline, SelectionConfig(max_drop=5), SETTINGS)
    assert selection.best == "a" and selection.lead["runner_up"] == "b" and selection.lead["outside"]
    c = next(r for r in records if r.trial_id == "c")
    assert c.drop_cis["ifeval.inst_strict"]["delta"] == pytest.approx(25.0) and c.drop_cis["ifeval.inst_strict"]["outside"]
    write_outputs(tmp_path, selection, baseline, ["train.lr"], "test", 5.0)
    table = (tmp_path / "trials.md").read_text()
    assert "Lead over the runner-up b: +" in table and "the items support it" in table
    low, high = c.drop_cis["ifeval.inst_strict"]["ci"]
    assert f"(-25.00 [{-high:+.2f}, {-low:+.2f}] *)" in table
    rows = {row["trial_id"]: row for row in csv.DictReader((tmp_path / "trials.csv").open())}
    assert float(rows["a"]["domain_ci_low"]) < float(rows["a"]["domain_score"]) < float(rows["a"]["domain_ci_high"])
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
