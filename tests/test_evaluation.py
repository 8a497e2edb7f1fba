"""Evaluation: input files, prompt parsing and scoring, the selection rule, the report, and the CLI's
errors on bad inputs. Model-backed tests (backends, MCQ, drift, the job end to end) are in
test_evaluation_models.py; IFEval's checkers in test_evaluation_ifeval.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from disc_ray.evaluation.config import EvalConfig, EvalInputError
from disc_ray.evaluation.data import load_mcq, load_qa, seeded_subset
from disc_ray.evaluation.mcq import summarize_mcq
from disc_ray.evaluation.prompts import (contains_answer, exact_match, extract_free_answer, majority_vote,
                                         mcq_generation_prompt, parse_answer_letter)
from disc_ray.evaluation.selection import RunScores, lookup, run_scores, select_best

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
BIOASQ = SHARED_DATA / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- data files


def test_real_bioasq_file_loads():
    items = load_mcq(BIOASQ)
    assert len(items) == 208
    assert all(len(i.options) == 4 and 0 <= i.correct_index < 4 for i in items)
    assert items[0].question.startswith("How many selenoproteins")
    assert items[0].options[items[0].correct_index] == "25"


@pytest.mark.parametrize("row,message", [
    ('{"question": "Q?", "options": ["a", "b"]', "not valid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ({"question": "", "options": ["a", "b"], "correct_index": 0}, "'question'"),
    ({"question": "Q?", "options": ["a"], "correct_index": 0}, "'options'"),
    ({"question": "Q?", "options": ["a", "b"], "correct_index": 2}, "'correct_index'"),
    ({"question": "Q?", "options": ["a", "b"], "correct_index": "1"}, "'correct_index'"),
])
def test_malformed_mcq_rows_name_file_and_line(tmp_path, row, message):
    good = {"question": "Q?", "options": ["a", "b"], "correct_index": 1}
    path = write_jsonl(tmp_path / "mcq.jsonl", [good, row])
    with pytest.raises(EvalInputError, match=message) as err:
        load_mcq(path)
    assert f"{path}:2: malformed row" in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(EvalInputError, match="MCQ file not found"):
        load_mcq(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EvalInputError, match="empty"):
        load_mcq(tmp_path / "empty.jsonl")


def test_mcq_kind_and_qa_aliases(tmp_path):
    mcq = write_jsonl(tmp_path / "m.jsonl", [{"question": "Q?", "options": ["a", "b"], "correct_index": 0, "meta": {"kind": "restated", "id": 3}}])
    assert load_mcq(mcq)[0].kind == "restated" and load_mcq(mcq)[0].item_id == "3"
    qa = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q1?", "answer": "Paris"}, {"question": "Q2?", "answers": ["NYC", "New York"]}])
    assert [i.answers for i in load_qa(qa)] == [("Paris",), ("NYC", "New York")]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"question": "Q?", "answers": []}])
    with pytest.raises(EvalInputError, match=":1: malformed row"):
        load_qa(bad)


def test_seeded_subset_is_fixed_by_seed_and_keeps_order():
    items = list(range(100))
    first = seeded_subset(items, 10, seed=3)
    assert first == seeded_subset(items, 10, seed=3) == sorted(first)
    assert first != seeded_subset(items, 10, seed=4)
    assert seeded_subset(items, None, seed=0) == items and seeded_subset(items, 500, seed=0) == items


def test_a_recorded_config_matches_across_checkouts_of_the_same_files(tmp_path):
    """An eval.json written from another checkout names the same IFEval file as ``<checkout>/../shared/...``: the
    same evaluation (reused by sweeps and resumes); another file, or any other value, is not."""
    cfg = EvalConfig(limit=8)
    recorded = json.loads(json.dumps(cfg.to_dict()))
    ifeval = Path(cfg.ifeval_path)  # <repo>/../shared/data/ifeval/input_data.jsonl, as an older default wrote it
    recorded["ifeval_path"] = str(ifeval.parents[3] / "some-checkout" / ".." / "shared" / "data" / "ifeval" / ifeval.name)
    assert recorded["ifeval_path"] != cfg.ifeval_path and cfg.matches(recorded)
    assert not cfg.matches({**recorded, "ifeval_path": str(tmp_path / "input_data.jsonl")})
    assert not cfg.matches({**recorded, "limit": 16}) and not cfg.matches(None)
    assert not cfg.matches({k: v for k, v in recorded.items() if k != "limit"})


def test_config_rejects_bad_values():
    with pytest.raises(EvalInputError, match="unknown suite"):
        EvalConfig(suites=("domain_mcq", "mmlu"))
    with pytest.raises(EvalInputError, match="unknown backend"):
        EvalConfig(backend="tgi")
    with pytest.raises(EvalInputError, match="qa_path"):
        EvalConfig(suites=("domain_qa",))
    with pytest.raises(EvalInputError, match="limit"):
        EvalConfig(limit=0)
    with pytest.raises(EvalInputError, match="mcq_limit"):
        EvalConfig(mcq_limit=0)
    assert EvalConfig(suites=("lm_eval:gsm8k",)).suites == ("lm_eval:gsm8k",)


# --------------------------------------------------------------------------- parsing and scoring


@pytest.mark.parametrize("text,expected", [
    ("<answer>B</answer>", 1),
    ("Let me think... <answer> c </answer>", 2),
    ("<answer>(D)</answer>", 3),
    ("<answer>A. Paris</answer>", 0),
    ("First <answer>A</answer>, no wait: <answer>B</answer>", 1),  # the last tag wins
    ("<answer>E</answer>", None),  # only 4 options
    ("The answer is B.", None),  # no tag: not parsed (the paper's protocol)
    ("<answer>Banana</answer>", None),  # a word, not a letter
])
def test_parse_answer_letter(text, expected):
    assert parse_answer_letter(text, 4) == expected


def test_majority_vote_ties_count_as_wrong():
    assert majority_vote([1, 1, 2]) == 1
    assert majority_vote([1, 2]) is None  # tie
    assert majority_vote([1, 1, 2, 2, 3]) is None
    assert majority_vote([None, None, 1]) == 1  # unparseable samples do not vote
    assert majority_vote([None, 2, 2, 1]) == 2
    assert majority_vote([None, None]) is None  # nothing parsed: wrong
    assert majority_vote([0]) == 0


def test_generation_prompt_lists_lettered_options():
    item = load_mcq(BIOASQ)[0]
    content = mcq_generation_prompt(item)[0]["content"]
    assert "<answer>" in content and item.question in content
    assert "\nA. 23\nB. 24\nC. 26\nD. 25" in content


def test_free_form_qa_scoring():
    assert extract_free_answer("Sure. <answer>The Eiffel Tower</answer>") == "The Eiffel Tower"
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"])
    assert not exact_match("Eiffel Tower in Paris", ["Eiffel Tower"])
    assert contains_answer("It is the Eiffel Tower in Paris", ["eiffel tower"])
    assert not contains_answer("Eiffelland", ["Eiffel"])  # whole words only
    assert contains_answer("It is New York.", ["NYC", "New York"])


def test_summarize_mcq_overall_and_per_kind():
    from disc_ray.evaluation.data import MCQItem

    items = [MCQItem("q", ("a", "b"), 0, kind) for kind in ("restated", "restated", "single", "single")]
    records = [dict(correct_ll=ok, correct_ll_norm=True, correct_gen=g, completions=["x", "y"], invalid_samples=inv)
               for ok, g, inv in ((True, True, 0), (False, False, 2), (True, False, 1), (True, True, 0))]
    metrics = summarize_mcq(items, records)
    assert metrics["accuracy_ll"] == 75 and metrics["accuracy_ll_norm"] == 100 and metrics["accuracy_gen"] == 50
    assert metrics["invalid_gen"] == 100 * 3 / 8
    assert metrics["by_kind"]["restated"] == {"n": 2, "accuracy_ll": 50, "accuracy_ll_norm": 100, "accuracy_gen": 50}
    assert metrics["by_kind"]["single"]["accuracy_ll"] == 100


# --------------------------------------------------------------------------- selection rule


def _scores(name, domain, **skills):
    return RunScores(name, domain, "domain_mcq.accuracy_gen", skills)


def test_selection_picks_best_domain_within_drop():
    baseline = _scores("base", 30.0, ifeval=50.0, gsm8k=40.0)
    runs = [
        _scores("a", 60.0, ifeval=44.0, gsm8k=40.0),  # ifeval drops 6 > 5: out
        _scores("b", 55.0, ifeval=45.0, gsm8k=36.0),  # drops exactly 5 and 4: in
        _scores("c", 50.0, ifeval=51.0, gsm8k=41.0),  # in, lower domain
    ]
    selection = select_best(runs, baseline, max_drop=5.0)
    assert selection.best == "b"
    assert not selection.verdict("a").eligible and "ifeval dropped 6.0 > 5 points" in selection.verdict("a").reason
    assert selection.verdict("b").drops == {"ifeval": 5.0, "gsm8k": 4.0}
    assert select_best(runs, baseline, max_drop=10.0).best == "a"
    assert select_best(runs, baseline, max_drop=0.0).best == "c"
    assert select_best(runs[:1], baseline, max_drop=5.0).best is None


def test_selection_missing_skill_and_ties():
    baseline = _scores("base", 10.0, ifeval=50.0)
    runs = [_scores("x", 70.0), _scores("y", 40.0, ifeval=49.0), _scores("z", 40.0, ifeval=47.0)]
    selection = select_best(runs, baseline)
    assert not selection.verdict("x").eligible and "missing" in selection.verdict("x").reason
    assert selection.best == "y"  # tie on domain: the smaller worst drop


def test_run_scores_from_eval_json_suites():
    suites = {"domain_mcq": {"accuracy_ll": 40.0, "n": 8}, "ifeval": {"score": 33.0}, "lm_eval:gsm8k": {"score": 12.0}}
    scores = run_scores("r", suites, ("domain_mcq.accuracy_gen", "domain_mcq.accuracy_ll"), ("ifeval.score",))
    assert (scores.domain, scores.domain_metric) == (40.0, "domain_mcq.accuracy_ll")
    assert scores.skills == {"ifeval.score": 33.0, "lm_eval:gsm8k.score": 12.0}
    assert lookup(suites, "domain_mcq.missing") is None and lookup(suites, "nothing.x") is None


# --------------------------------------------------------------------------- report across runs


def _eval_json(folder: Path, name: str, domain: float, ifeval: float, kl: float, baseline=(30.0, 50.0)) -> Path:
    folder.mkdir(parents=True)
    record = {"model": f"/runs/{name}/model", "name": name, "backend": "hf", "seed": 0,
              "suites": {"domain_mcq": {"accuracy_gen": domain, "n": 10}, "ifeval": {"inst_strict": ifeval, "n": 10},
                         "drift": {"kl": kl, "nll": 1.0, "n": 4}},
              "baseline": {"model": "/models/original", "suites": {"domain_mcq": {"accuracy_gen": baseline[0]},
                                                                     "ifeval": {"inst_strict": baseline[1]}, "drift": {"kl": 0.0}}},
              "config": {"max_drop": 5.0}}
    (folder / "eval.json").write_text(json.dumps(record))
    return folder


def test_report_table_and_plot(tmp_path):
    from disc_ray.evaluation.report import write_report

    runs = [_eval_json(tmp_path / "lr1", "lr1", 45.0, 48.0, 0.02), _eval_json(tmp_path / "lr3", "lr3", 60.0, 40.0, 0.2),
            _eval_json(tmp_path / "lr2" , "lr2", 52.0, 46.0, 0.05)]
    result = write_report(runs, tmp_path / "report")
    assert result["best"] == "lr2"
    table = (tmp_path / "report" / "report.md").read_text()
    assert "**lr2** (selected)" in table and "*baseline (original)*" in table
    assert "ifeval.inst_strict dropped 10.0 > 5 points" in table
    png = (tmp_path / "report" / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert write_report(runs, tmp_path / "r2", max_drop=15.0)["best"] == "lr3"


@pytest.mark.ray
def test_report_cli(tmp_path):
    from disc_ray.cli import main

    run = _eval_json(tmp_path / "only", "only", 40.0, 49.0, 0.01)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "tradeoff.png").is_file()
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "rep")]) == 2


# --------------------------------------------------------------------------- the job's errors on bad inputs


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def _assert_clean_error(result: subprocess.CompletedProcess, fragment: str):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


@pytest.mark.ray
def test_job_bad_inputs_give_one_line_errors(tmp_path, embedded_dir):
    bad_rows = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q?", "options": ["a", "b"], "correct_index": 1}, "{oops"])
    no_tokenizer = tmp_path / "model_without_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((embedded_dir / "config.json").read_text())
    _assert_clean_error(run_job(str(embedded_dir), "--evaluation.suites", "domain_mcq", "--evaluation.mcq_path", str(tmp_path / "nope.jsonl")),
                        "MCQ file not found")
    _assert_clean_error(run_job(str(embedded_dir), "--evaluation.suites", "domain_mcq", "--evaluation.mcq_path", str(bad_rows)),
                        f"{bad_rows}:2: malformed row")
    _assert_clean_error(run_job(str(no_tokenizer), "--evaluation.suites", "domain_mcq"), "has no tokenizer")
    _assert_clean_error(run_job(str(tmp_path / "no_such_model"), "--evaluation.suites", "domain_mcq"), "does not exist")
    _assert_clean_error(run_job(str(embedded_dir), "--evaluation.suites", "drift"), "needs the original model")
    _assert_clean_error(run_job(str(embedded_dir), "--evaluation.suites", "domain_mcq", "--evaluation.backend", "vllm"), "vLLM")
    _assert_clean_error(run_job(str(embedded_dir), "--evaluation.limt", "2"),
                        "unknown config key 'evaluation.limt' (did you mean 'evaluation.limit'?)")


def test_vllm_backends_fail_clearly_without_vllm(embedded_dir):
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed: the missing-engine error cannot be observed")
    except ImportError:
        pass
    from disc_ray.evaluation.backends import build_backend
    from disc_ray.evaluation.config import BackendUnavailableError

    for backend in ("vllm", "ray_vllm"):
        with pytest.raises(BackendUnavailableError, match="pip install 'disc-ray\\[vllm\\]'"):
            build_backend(str(embedded_dir), EvalConfig(backend=backend))


def test_lm_eval_metrics_are_converted_to_points():
    from disc_ray.evaluation.lm_eval_tasks import convert_task_metrics

    metrics = convert_task_metrics({"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.01,
                                    "exact_match,flexible-extract": 0.3, "word_perplexity,none": 12.5})
    assert metrics == {"exact_match/strict-match": 25.0, "exact_match_stderr/strict-match": 1.0, "score": 25.0,
                       "exact_match/flexible-extract": 30.0, "word_perplexity": 12.5}
    from disc_ray.evaluation.lm_eval_tasks import stderr_intervals

    intervals = stderr_intervals(metrics)  # 25 -/+ 1.96 x 1 point; no stderr, no interval
    assert intervals["exact_match/strict-match"] == pytest.approx([25 - 1.959964, 25 + 1.959964])
    assert intervals["score"] == intervals["exact_match/strict-match"] and set(intervals) == {"exact_match/strict-match", "score"}
