"""Evaluation with real models: the hf backend against full-logit references, the MCQ scorers on a tiny
model trained to prefer known answers, drift (0 against itself, > 0 after a step, packed == unpacked),
the reference cache, jobs/evaluate.py end to end, the embedded default, and vLLM == hf where vLLM exists."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disc_ray.evaluation.backends import HFBackend
from disc_ray.evaluation.config import EvalConfig
from disc_ray.evaluation.data import MCQItem
from disc_ray.evaluation.drift import build_drift_batches, compute_drift, reference_responses
from disc_ray.evaluation.mcq import score_mcq_generation, score_mcq_loglikelihood
from disc_ray.evaluation.prompts import encode_pair, encode_prompt, mcq_generation_prompt, mcq_loglikelihood_context

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
CHAT = [{"role": "user", "content": "Name a colour of the sky."}]


def full_logit_loglikelihood(model, tokenizer, context, continuation) -> float:
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(context_ids) - 1 + i, t].item() for i, t in enumerate(continuation_ids))


def train_on(model, tokenizer, pairs, steps: int, lr: float = 3e-3):
    """Teach ``model`` each (context, continuation) pair with cross-entropy on the continuation tokens."""
    rows = [encode_pair(tokenizer, c, x) for c, x in pairs]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.0
        for context_ids, continuation_ids in rows:
            ids = torch.tensor([context_ids + continuation_ids])
            logits = model(input_ids=ids).logits[0, len(context_ids) - 1 : -1]
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor(continuation_ids))
        loss.backward()
        optimizer.step()
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def tiny_dir(tmp_path, tiny_model, tokenizer) -> Path:
    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- hf backend


def test_hf_loglikelihood_matches_full_logits(tiny_model, tokenizer):
    pairs = [(CHAT, "Blue"), (CHAT, "A deep shade of orange at sunset"), ("The sky is", " grey"),
             ([{"role": "user", "content": "Longer question about the weather today, please?"}], "Sunny.")]
    backend = HFBackend(tiny_model, tokenizer, batch_size=3, progress=False)
    scores = backend.loglikelihood(pairs)
    expected = [full_logit_loglikelihood(tiny_model, tokenizer, c, x) for c, x in pairs]
    assert scores == pytest.approx(expected, abs=1e-3)
    assert all(s < 0 for s in scores)


def test_hf_greedy_is_batch_invariant_and_sampling_is_seeded(tiny_model, tokenizer):
    prompts = [CHAT, [{"role": "user", "content": "Hi"}], "Plain text prompt with more words in it", CHAT]
    one = HFBackend(tiny_model, tokenizer, batch_size=1, progress=False).generate(prompts, max_new_tokens=6)
    four = HFBackend(tiny_model, tokenizer, batch_size=4, progress=False)
    assert four.generate(prompts, max_new_tokens=6) == one
    assert one[0] == one[3] and all(len(r) == 1 and r[0] for r in one)
    # greedy equals an argmax loop over full logits
    ids = encode_prompt(tokenizer, CHAT)
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert one[0][0] == tokenizer.decode(ids[-6:], skip_special_tokens=True)
    sampled = four.generate(prompts[:2], n=3, temperature=1.0, max_new_tokens=6, seed=5)
    assert sampled == four.generate(prompts[:2], n=3, temperature=1.0, max_new_tokens=6, seed=5)
    assert sampled != four.generate(prompts[:2], n=3, temperature=1.0, max_new_tokens=6, seed=6)
    assert len(set(sampled[0])) > 1  # three different samples
    assert four.stats.prompts == 2 + 2 + 2 + 4 and four.stats.generated_tokens > 0


# --------------------------------------------------------------------------- MCQ scorers


def _least_likely_items(model, tokenizer) -> list[MCQItem]:
    """Questions whose 'correct' option is the one the untrained model likes LEAST (so accuracy starts at 0)."""
    raw = [("Which fruit is yellow?", ("banana", "cherry", "grape", "plum")),
           ("Which planet is red?", ("Mars", "Venus", "Saturn", "Neptune")),
           ("Which animal barks?", ("dog", "cow", "sheep", "horse"))]
    items = []
    for question, options in raw:
        scores = [full_logit_loglikelihood(model, tokenizer, [{"role": "user", "content": question}], o) for o in options]
        items.append(MCQItem(question, options, min(range(4), key=scores.__getitem__)))
    return items


def test_mcq_loglikelihood_picks_the_option_the_model_was_trained_to_prefer(tiny_model, tokenizer):
    items = _least_likely_items(tiny_model, tokenizer)
    before = score_mcq_loglikelihood(HFBackend(tiny_model, tokenizer, progress=False), items)
    assert not any(r["correct_ll"] for r in before)
    train_on(tiny_model, tokenizer, [(mcq_loglikelihood_context(i), i.options[i.correct_index]) for i in items], steps=30)
    after = score_mcq_loglikelihood(HFBackend(tiny_model, tokenizer, batch_size=5, progress=False), items)
    assert all(r["correct_ll"] for r in after)
    assert [r["prediction_ll"] for r in after] == [i.correct_index for i in items]


def test_mcq_continuous_scores_by_hand_on_a_tiny_model(tiny_model, tokenizer):
    """prob_correct and margin from the scorer == a hand computation from full-logit log-likelihoods, and
    training towards the right options raises prob_correct (the continuous score moves)."""
    import math

    from disc_ray.evaluation.mcq import summarize_mcq

    items = [MCQItem("Which fruit is yellow?", ("cherry", "a ripe banana", "grape", "plum"), 1),
             MCQItem("Which planet is red?", ("Mars", "Saturn", "the planet Venus"), 0)]

    def by_hand(item):
        normalized = [full_logit_loglikelihood(tiny_model, tokenizer, mcq_loglikelihood_context(item), option)
                      / len(option.encode("utf-8")) for option in item.options]
        total = sum(math.exp(v) for v in normalized)
        others = [v for i, v in enumerate(normalized) if i != item.correct_index]
        return 100 * math.exp(normalized[item.correct_index]) / total, normalized[item.correct_index] - max(others)

    records = score_mcq_loglikelihood(HFBackend(tiny_model, tokenizer, batch_size=3, progress=False), items)
    for item, record in zip(items, records):
        expected_p, expected_margin = by_hand(item)
        assert record["prob_correct"] == pytest.approx(expected_p, abs=1e-3)
        assert record["margin"] == pytest.approx(expected_margin, abs=1e-4)
        assert (record["margin"] > 0) == record["correct_ll_norm"]
    before = summarize_mcq(items, records)
    assert before["prob_correct"] == pytest.approx(sum(r["prob_correct"] for r in records) / 2)
    train_on(tiny_model, tokenizer, [(mcq_loglikelihood_context(i), i.options[i.correct_index]) for i in items], steps=10)
    after = summarize_mcq(items, score_mcq_loglikelihood(HFBackend(tiny_model, tokenizer, progress=False), items))
    assert after["prob_correct"] > before["prob_correct"] + 5 and after["margin"] > before["margin"]


def test_mcq_generation_protocol_on_a_model_trained_to_answer(tiny_model, tokenizer):
    """A model taught to always reply <answer>B</answer>: right where B is correct, wrong elsewhere."""
    items = [MCQItem("Which fruit is yellow?", ("cherry", "banana", "grape"), 1),
             MCQItem("Which planet is red?", ("Mars", "Saturn", "Venus"), 0)]
    train_on(tiny_model, tokenizer, [(mcq_generation_prompt(i), "<answer>B</answer><|im_end|>") for i in items], steps=60, lr=5e-3)
    backend = HFBackend(tiny_model, tokenizer, progress=False)
    greedy = score_mcq_generation(backend, items, n_samples=1, temperature=0.0, max_new_tokens=8, seed=0)
    assert [r["completions"][0] for r in greedy] == ["<answer>B</answer>"] * 2
    assert [r["prediction_gen"] for r in greedy] == ["B", "B"] and [r["correct_gen"] for r in greedy] == [True, False]
    sampled = score_mcq_generation(backend, items, n_samples=3, temperature=1.0, max_new_tokens=8, seed=0)
    assert all(len(r["completions"]) == 3 and len(r["votes"]) == 3 for r in sampled)


# --------------------------------------------------------------------------- drift


def _records():
    return [{"prompt": "Say something nice.", "response": "You are doing great today."},
            {"prompt": "Count to three.", "response": "One, two, three."},
            {"prompt": "Name a fruit.", "response": "Apple."}]


def test_drift_is_zero_against_itself_and_positive_after_a_step(tiny_model, tokenizer):
    batches = build_drift_batches(tokenizer, _records())
    original = copy.deepcopy(tiny_model).eval()
    same = compute_drift(original, tiny_model, batches)
    assert same["drift_kl"] == pytest.approx(0.0, abs=1e-6)
    # NLL equals the mean negative log-likelihood over response tokens from full logits
    pairs = [([{"role": "user", "content": r["prompt"]}], r["response"]) for r in _records()]
    tokens = sum(len(encode_pair(tokenizer, c, x)[1]) for c, x in pairs)
    reference_nll = -sum(full_logit_loglikelihood(tiny_model, tokenizer, c, x) for c, x in pairs) / tokens
    assert same["drift_nll"] == pytest.approx(reference_nll, rel=1e-4) and same["drift_tokens"] == tokens
    tiny_model.train()
    train_on(tiny_model, tokenizer, [("Unrelated text", " about something else entirely.")], steps=1, lr=1e-3)
    tiny_model.train()
    moved = compute_drift(original, tiny_model, batches)
    assert moved["drift_kl"] > 1e-6
    assert tiny_model.training and not original.training  # modes restored


def test_drift_packed_equals_one_sequence_per_batch(student_teacher, tokenizer):
    adapted, original = student_teacher
    packed = build_drift_batches(tokenizer, _records(), max_tokens_per_batch=4096)
    single = build_drift_batches(tokenizer, _records(), max_tokens_per_batch=1)
    assert len(packed) == 1 and len(single) == 3
    a, b = compute_drift(original, adapted, packed), compute_drift(original, adapted, single)
    assert a["drift_kl"] > 0
    assert a["drift_kl"] == pytest.approx(b["drift_kl"], rel=1e-4) and a["drift_nll"] == pytest.approx(b["drift_nll"], rel=1e-5)


def test_drift_suite_per_prompt_values_add_up_to_the_packed_metric(student_teacher, tokenizer, tiny_dir, tmp_path):
    """The drift suite scores prompt by prompt (for its intervals): its KL / NLL equal compute_drift over the packed
    batch, and the per-item sums / token weights reproduce them."""
    from disc_ray.evaluation.drift import run_drift_suite
    from disc_ray.evaluation.stats import attach_intervals, suite_items

    adapted, original = student_teacher
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), drift_num_prompts=3, drift_max_new_tokens=6, progress=False)
    result = run_drift_suite(adapted, tokenizer, str(tiny_dir), cfg, original_model=original,
                             reference_backend=HFBackend(original, tokenizer, progress=False))
    packed = compute_drift(original, adapted, build_drift_batches(tokenizer, result.samples))
    metrics = attach_intervals(result.metrics)
    assert metrics["kl"] == pytest.approx(packed["drift_kl"], rel=1e-4) and metrics["kl"] > 0
    assert metrics["nll"] == pytest.approx(packed["drift_nll"], rel=1e-5) and metrics["tokens"] == packed["drift_tokens"]
    kl = suite_items({"drift": metrics}, "drift.kl")
    assert len(kl) == 3 and kl.weights.sum() == packed["drift_tokens"] and kl.score == pytest.approx(metrics["kl"])
    assert metrics["ci"]["kl"][0] <= metrics["kl"] <= metrics["ci"]["kl"][1]


def test_reference_responses_are_generated_once_and_cached(tiny_dir, tmp_path):
    cfg = EvalConfig(cache_dir=str(tmp_path / "cache"), progress=False)
    backend = HFBackend.load(str(tiny_dir), device="cpu", progress=False)
    prompts = ["Say hi.", "Name a fruit."]
    first, path = reference_responses(str(tiny_dir), prompts, max_new_tokens=5, backend=backend, cfg=cfg)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache") and backend.stats.prompts == 2
    again, same_path = reference_responses(str(tiny_dir), prompts, max_new_tokens=5, backend=backend, cfg=cfg)
    assert (again, same_path) == (first, path) and backend.stats.prompts == 2  # no new generation
    _, other = reference_responses(str(tiny_dir), prompts, max_new_tokens=6, backend=backend, cfg=cfg)
    assert other != path


# --------------------------------------------------------------------------- the job, end to end


@pytest.mark.ray
def test_evaluate_job_end_to_end_on_tiny_models(tmp_path, tiny_dir, embedded_dir):
    from disc_ray.models import build_tiny_model

    adapted, tokenizer = build_tiny_model(str(embedded_dir), seed=1)  # a different model: drift > 0
    adapted_dir = tmp_path / "adapted"
    adapted.save_pretrained(adapted_dir)
    tokenizer.save_pretrained(adapted_dir)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), str(adapted_dir), "--baseline", str(tiny_dir),
         "--evaluation.suites", "domain_mcq,ifeval,drift", "--evaluation.limit", "2", "--evaluation.n_samples", "2",
         "--evaluation.mcq_max_new_tokens", "6", "--evaluation.max_new_tokens", "6", "--evaluation.drift_max_new_tokens", "6",
         "--evaluation.mcq_path", str(BIOASQ), "--out", str(out), "--evaluation.cache_dir", str(tmp_path / "cache"),
         "--evaluation.device", "cpu", "--evaluation.progress", "false"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "eval.json").read_text())
    assert (record["model"], record["backend"], record["seed"]) == (str(adapted_dir), "hf", 0)
    for suites in (record["suites"], record["baseline"]["suites"]):
        assert {"accuracy_ll", "accuracy_ll_norm", "accuracy_gen", "n", "version"} <= set(suites["domain_mcq"])
        assert {"prompt_strict", "prompt_loose", "inst_strict", "inst_loose", "n"} <= set(suites["ifeval"])
        assert {"kl", "nll", "n"} <= set(suites["drift"]) and suites["domain_mcq"]["n"] == suites["ifeval"]["n"] == 2
        assert all(0 <= suites["domain_mcq"][k] <= 100 for k in ("accuracy_ll", "accuracy_gen"))
    assert record["baseline"]["suites"]["drift"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert record["suites"]["drift"]["kl"] > 0.0
    assert record["deltas"]["drift"]["kl"] == pytest.approx(record["suites"]["drift"]["kl"])
    assert record["deltas"]["domain_mcq"]["accuracy_ll"] == pytest.approx(
        record["suites"]["domain_mcq"]["accuracy_ll"] - record["baseline"]["suites"]["domain_mcq"]["accuracy_ll"])
    assert record["selection"]["max_drop"] == 5.0 and isinstance(record["selection"]["eligible"], bool)
    markdown = (out / "eval.md").read_text()
    assert "| drift | kl |" in markdown
    for suite, metric in (("domain_mcq", "prob_correct"), ("domain_mcq", "accuracy_gen_lenient"), ("ifeval", "inst_strict"),
                          ("drift", "kl")):
        value, (low, high) = record["suites"][suite][metric], record["suites"][suite]["ci"][metric]
        assert low <= value <= high
        paired = record["delta_ci"][suite][metric]
        assert paired["n"] == 2 and paired["ci"][0] <= paired["delta"] <= paired["ci"][1]
    assert record["delta_ci"]["drift"]["kl"]["delta"] == pytest.approx(record["deltas"]["drift"]["kl"])
    assert "| domain_mcq | prob_correct | " in markdown and "[paired 95% CI]" in markdown
    samples = [json.loads(line) for line in (out / "samples" / "domain_mcq.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and len(samples[0]["completions"]) == 2
    from disc_ray.cli import main

    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "tradeoff.png").stat().st_size > 1000


@pytest.mark.ray
def test_baseline_can_be_a_previous_eval_json(tmp_path, tiny_dir, student_teacher, tokenizer):
    from disc_ray.evaluation.runner import main

    adapted, _ = student_teacher
    adapted_dir = tmp_path / "adapted"
    adapted.save_pretrained(adapted_dir)
    tokenizer.save_pretrained(adapted_dir)
    config = tmp_path / "eval.yaml"  # the evaluation section from a file, overridden on the command line
    config.write_text(f"evaluation:\n  suites: [domain_mcq]\n  mcq_modes: [ll]\n  limit: 2\n  mcq_path: {BIOASQ}\n")
    common = ["--config", str(config), "--evaluation.mcq_limit", "3", "--evaluation.progress", "false", "--evaluation.device", "cpu"]
    assert main([str(tiny_dir), "--out", str(tmp_path / "base_eval"), *common]) == 0
    assert main([str(adapted_dir), "--baseline", str(tmp_path / "base_eval"), "--out", str(tmp_path / "eval"), *common]) == 0
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    base = json.loads((tmp_path / "base_eval" / "eval.json").read_text())
    assert record["baseline"]["model"] == str(tiny_dir) and record["baseline"]["suites"] == base["suites"]
    assert record["suites"]["domain_mcq"]["n"] == 3  # mcq_limit, not limit, sets the MCQ subset
    assert set(record["deltas"]["domain_mcq"]) == {"accuracy_ll", "accuracy_ll_norm", "prob_correct", "margin"}
    paired = record["delta_ci"]["domain_mcq"]  # the same 3 questions: paired intervals around the point deltas
    for metric, delta in record["deltas"]["domain_mcq"].items():
        assert paired[metric]["n"] == 3 and paired[metric]["delta"] == pytest.approx(delta)
        assert paired[metric]["ci"][0] <= delta <= paired[metric]["ci"][1]
    assert record["bootstrap"]["seed"] == 0 and "prob_correct" in record["suites"]["domain_mcq"]["ci"]
    assert record["selection"]["eligible"] is False  # no retained-skill suite was run, so the rule cannot pass it


def test_free_form_qa_suite(tmp_path, tiny_model, tokenizer):
    from disc_ray.evaluation.data import load_qa
    from disc_ray.evaluation.prompts import qa_prompt
    from disc_ray.evaluation.qa import run_qa_suite

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "What is the capital of France?", "answer": "Paris"}) + "\n"
                    + json.dumps({"question": "What is the capital of Italy?", "answers": ["Rome", "Roma"]}) + "\n")
    train_on(tiny_model, tokenizer, [(qa_prompt(i), "<answer>The Paris</answer><|im_end|>") for i in load_qa(path)],
             steps=60, lr=5e-3)
    result = run_qa_suite(HFBackend(tiny_model, tokenizer, progress=False),
                          EvalConfig(suites=("domain_qa",), qa_path=str(path), qa_max_new_tokens=10))
    assert [r["answer"] for r in result.samples] == ["The Paris", "The Paris"]
    assert (result.metrics["exact_match"], result.metrics["contains"], result.metrics["n"]) == (50.0, 50.0, 2)


# --------------------------------------------------------------------------- the real embedded default


def test_embedded_default_prefers_obvious_answers_by_loglikelihood(embedded_dir):
    backend = HFBackend.load(str(embedded_dir), device="cpu", progress=False)
    items = [MCQItem("What is the capital of France?", ("Berlin", "Paris", "Madrid", "Rome"), 1),
             MCQItem("What is the opposite of hot?", ("cold", "tall", "green", "fast"), 0),
             MCQItem("Which animal says meow?", ("dog", "cat", "cow", "duck"), 1),
             MCQItem("What do bees make?", ("steel", "plastic", "glass", "honey"), 3)]
    records = score_mcq_loglikelihood(backend, items)
    assert [r["prediction_ll"] for r in records] == [1, 0, 1, 3]


# --------------------------------------------------------------------------- vLLM agrees with hf (GPU machines)


@pytest.mark.gpu
def test_vllm_and_hf_give_the_same_greedy_scores(embedded_dir):
    pytest.importorskip("vllm", reason="vLLM is not installed here (it needs Linux + an NVIDIA GPU): hf-vs-vllm check skipped")
    from disc_ray.evaluation.backends import VLLMBackend
    from disc_ray.evaluation.runner import evaluate_suites

    cfg = EvalConfig(suites=("domain_mcq", "ifeval"), limit=8, n_samples=1, temperature=0.0, max_new_tokens=64,
                     mcq_max_new_tokens=32, dtype="float32", progress=False)
    hf, _, _ = evaluate_suites(str(embedded_dir), cfg.replace(backend="hf"))
    vllm, _, _ = evaluate_suites(str(embedded_dir), cfg.replace(backend="vllm"))
    assert vllm["domain_mcq"].metrics["accuracy_ll"] == hf["domain_mcq"].metrics["accuracy_ll"]
    assert vllm["domain_mcq"].metrics["accuracy_gen"] == hf["domain_mcq"].metrics["accuracy_gen"]
    for key in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose"):
        assert vllm["ifeval"].metrics[key] == hf["ifeval"].metrics[key]
    backend = VLLMBackend(str(embedded_dir), dtype="float32", progress=False)
    pairs = [(CHAT, "Blue"), ("The sky is", " grey")]
    hf_backend = HFBackend.load(str(embedded_dir), device="cuda", dtype="float32", progress=False)
    assert backend.loglikelihood(pairs) == pytest.approx(hf_backend.loglikelihood(pairs), abs=1e-2)
    same = lambda b: {k: v for k, v in b.settings.as_dict().items() if k != "backend"}  # noqa: E731
    assert same(backend) == same(hf_backend)  # decoding, dtype, window: one resolution for both engines
