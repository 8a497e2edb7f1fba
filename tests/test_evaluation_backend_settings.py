"""hf / vLLM parity: the decoding, dtype and window settings every backend resolves by one rule
(disc_ray/evaluation/backends/settings.py), checked as pure functions, on the hf backend with a tiny real
model, through the ray_vllm row builders (no vLLM here; they call the same shared functions), and recorded in
eval.json."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationConfig

from disc_ray.evaluation.backends import HFBackend, GenerationStats
from disc_ray.evaluation.backends.base import encode_pairs, encode_prompts
from disc_ray.evaluation.backends.settings import (NEUTRAL, fit_prompt, hf_generation_kwargs, resolve_backend_settings,
                                                   resolve_dtype_name, vllm_sampling_kwargs)
from disc_ray.evaluation.config import EvalConfig, EvalInputError
from disc_ray.evaluation.prompts import encode_pair, encode_prompt

CHAT = [{"role": "user", "content": "Name a colour of the sky."}]
LONG = "Tell me everything about the river that runs past the old harbour town, the fishermen and the sea. " * 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings_for(tokenizer, generation_config=None, **overrides):
    return resolve_backend_settings("hf", tokenizer, generation_config, model_window=8192, dtype="float32", **overrides)


# --------------------------------------------------------------------------- pure rules


def test_decoding_comes_from_the_config_then_generation_config_then_neutral(tokenizer):
    model_config = GenerationConfig(top_p=0.8, top_k=20, repetition_penalty=1.05, temperature=0.7, do_sample=True,
                                    no_repeat_ngram_size=3, eos_token_id=[2, 7])
    settings = settings_for(tokenizer, model_config, top_p=0.95)
    assert (settings.top_p, settings.top_k, settings.repetition_penalty) == (0.95, 20, 1.05)
    assert settings.sources == {"top_p": "evaluation config", "top_k": "generation_config.json",
                                "repetition_penalty": "generation_config.json"}
    assert settings.stop_token_ids == (2, 7)  # the tokenizer's EOS and the generation config's
    assert settings.ignored_generation_config == {"temperature": 0.7, "do_sample": True, "no_repeat_ngram_size": 3}
    neutral = settings_for(tokenizer, None)
    assert (neutral.top_p, neutral.top_k, neutral.repetition_penalty) == tuple(NEUTRAL.values())
    assert set(neutral.sources.values()) == {"neutral"} and neutral.ignored_generation_config == {}
    assert settings_for(tokenizer, None, max_model_len=512).window == 512
    assert resolve_backend_settings("hf", tokenizer, None, model_window=256, dtype="float32", max_model_len=4096).window == 256
    recorded = json.loads(json.dumps(settings.as_dict()))
    assert recorded["stop_token_ids"] == [2, 7] and recorded["dtype"] == "float32" and recorded["truncation"] == "left"


def test_one_call_translates_identically_for_transformers_and_vllm(tokenizer):
    settings = settings_for(tokenizer, GenerationConfig(top_p=0.8, top_k=20, repetition_penalty=1.3))
    sampled = settings.for_call(n=3, temperature=0.7, max_new_tokens=16, seed=4)
    hf, vllm = hf_generation_kwargs(sampled, pad_token_id=2), vllm_sampling_kwargs(sampled)
    assert hf["do_sample"] and hf["num_return_sequences"] == vllm["n"] == 3
    for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
        assert hf[key] == vllm[key] == getattr(sampled, key)
    assert hf["max_new_tokens"] == vllm["max_tokens"] == 16 and hf["eos_token_id"] == vllm["stop_token_ids"] == [2]
    greedy = settings.for_call(n=1, temperature=0.0, max_new_tokens=8, seed=0)
    assert (greedy.top_p, greedy.top_k, greedy.repetition_penalty) == (1.0, 0, 1.3)  # penalty applies to greedy too
    assert not hf_generation_kwargs(greedy, 2)["do_sample"] and hf_generation_kwargs(greedy, 2)["repetition_penalty"] == 1.3
    assert vllm_sampling_kwargs(greedy)["top_k"] == -1 and vllm_sampling_kwargs(greedy)["temperature"] == 0.0
    assert vllm_sampling_kwargs(sampled, n=1, seed=9)["n"] == 1 and vllm_sampling_kwargs(sampled, n=1, seed=9)["seed"] == 9
    with pytest.raises(EvalInputError, match="identical greedy completions"):
        settings.for_call(n=2, temperature=0.0, max_new_tokens=8, seed=0)
    with pytest.raises(EvalInputError, match="identical greedy samples"):
        EvalConfig(n_samples=3, temperature=0.0)
    assert EvalConfig(n_samples=3, temperature=0.0, mcq_modes=("ll",)).n_samples == 3  # no generation: nothing to refuse


def test_one_dtype_rule_and_one_truncation_rule():
    assert resolve_dtype_name("auto", on_cuda=True) == "bfloat16" and resolve_dtype_name("auto", on_cuda=False) == "float32"
    assert resolve_dtype_name("float16", on_cuda=True) == "float16" and resolve_dtype_name("half", on_cuda=False) == "float16"
    with pytest.raises(EvalInputError, match="unknown dtype 'int8'"):
        resolve_dtype_name("int8", on_cuda=True)
    assert fit_prompt(list(range(10)), 12, 4) == ([2, 3, 4, 5, 6, 7, 8, 9], 2)
    assert fit_prompt(list(range(10)), None, 4) == (list(range(10)), 0)
    assert fit_prompt(list(range(5)), 12, 4) == (list(range(5)), 0)
    with pytest.raises(EvalInputError, match="max_new_tokens=12 leaves no room"):
        fit_prompt([1], 12, 12)


def test_prompts_and_pairs_are_cut_from_the_left_and_counted(tokenizer):
    settings = settings_for(tokenizer, None, max_model_len=32)
    stats = GenerationStats()
    full = encode_prompt(tokenizer, LONG)
    encoded = encode_prompts(tokenizer, [LONG, "Hi"], settings, 8, stats)
    assert encoded == [full[-24:], encode_prompt(tokenizer, "Hi")]
    assert (stats.truncated_prompts, stats.truncated_tokens) == (1, len(full) - 24)
    context_ids, option_ids = encode_pair(tokenizer, LONG, " sea")
    pairs = encode_pairs(tokenizer, [(LONG, " sea"), ("Short", " sea")], settings, stats)
    assert pairs[0] == (context_ids[-(32 - len(option_ids)):], option_ids)
    assert stats.truncated_prompts == 2


def test_ray_vllm_rows_use_the_shared_settings(tokenizer):
    from disc_ray.evaluation.backends.ray_vllm import generation_rows, loglikelihood_rows

    settings = settings_for(tokenizer, GenerationConfig(repetition_penalty=1.2, top_p=0.9), max_model_len=32)
    decoding = settings.for_call(n=3, temperature=1.0, max_new_tokens=8, seed=10)
    stats, hf_stats = GenerationStats(), GenerationStats()
    rows = generation_rows(tokenizer, [LONG, CHAT], settings, decoding, stats)
    assert [r["row_id"] for r in rows] == list(range(6))
    expected = encode_prompts(tokenizer, [LONG, CHAT], settings, 8, hf_stats)  # what hf generates from
    assert [r["tokenized_prompt"] for r in rows] == [expected[0]] * 3 + [expected[1]] * 3
    assert [r["sampling_params"]["seed"] for r in rows] == [10, 11, 12] * 2
    assert all(r["sampling_params"] == dict(vllm_sampling_kwargs(decoding, n=1, seed=r["sampling_params"]["seed"]),
                                            detokenize=False) for r in rows)
    assert rows[0]["sampling_params"]["repetition_penalty"] == 1.2 and rows[0]["sampling_params"]["top_p"] == 0.9
    assert stats.truncated_prompts == hf_stats.truncated_prompts == 2  # once per prompt (both are long), not per sample
    ll_rows, encoded = loglikelihood_rows(tokenizer, [(LONG, " sea")], settings, stats)
    assert len(ll_rows[0]["tokenized_prompt"]) == 32 and ll_rows[0]["tokenized_prompt"] == encoded[0][0] + encoded[0][1]
    with pytest.raises(EvalInputError, match="identical greedy"):
        settings.for_call(n=2, temperature=0.0, max_new_tokens=8, seed=0)


# --------------------------------------------------------------------------- the hf backend applies exactly them


def greedy_by_argmax(model, ids: list[int], steps: int) -> list[int]:
    ids = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-steps:]


def test_hf_applies_the_shared_settings_and_nothing_else_of_generation_config(tiny_model, tokenizer):
    prompt_ids = encode_prompt(tokenizer, CHAT)
    expected = tokenizer.decode(greedy_by_argmax(tiny_model, prompt_ids, 6), skip_special_tokens=True)
    # a tiny random model repeats itself, so either of these would change its greedy output if applied
    tiny_model.generation_config = GenerationConfig(no_repeat_ngram_size=1, min_new_tokens=5, eos_token_id=2)
    backend = HFBackend(tiny_model, tokenizer, progress=False)
    assert backend.settings.ignored_generation_config == {"no_repeat_ngram_size": 1, "min_new_tokens": 5}
    assert backend.generate([CHAT], max_new_tokens=6) == [[expected]]
    assert len(set(greedy_by_argmax(tiny_model, prompt_ids, 6))) < 6  # (the premise: it does repeat a token)
    tiny_model.generation_config = GenerationConfig(repetition_penalty=50.0, eos_token_id=2)
    penalized = HFBackend(tiny_model, tokenizer, progress=False)
    assert penalized.settings.repetition_penalty == 50.0
    assert penalized.generate([CHAT], max_new_tokens=6) != [[expected]]
    overridden = HFBackend(tiny_model, tokenizer, progress=False, repetition_penalty=1.0)
    assert overridden.generate([CHAT], max_new_tokens=6) == [[expected]]
    assert tiny_model.generation_config.repetition_penalty == 50.0  # the model's own config is left as it was


def test_hf_generates_from_the_left_cut_prompt_and_counts_it(tiny_model, tokenizer):
    backend = HFBackend(tiny_model, tokenizer, progress=False, max_model_len=30)
    (completion,) = backend.generate([LONG], max_new_tokens=4)
    kept = encode_prompt(tokenizer, LONG)[-26:]
    assert completion == [tokenizer.decode(greedy_by_argmax(tiny_model, kept, 4), skip_special_tokens=True)]
    assert backend.stats.truncated_prompts == 1


def test_eval_json_records_the_settings_and_truncations(tmp_path, tiny_model_dir):
    from disc_ray.evaluation.runner import evaluate

    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text("".join(json.dumps({"question": question, "options": ["sea", "lake"], "correct_index": 0}) + "\n"
                           for question in (LONG, "Where do rivers run?")))
    cfg = EvalConfig(suites=("domain_mcq",), mcq_modes=("ll",), mcq_path=str(mcq), device="cpu", progress=False,
                     max_model_len=40, bootstrap_resamples=100)
    record = evaluate(str(tiny_model_dir), cfg, out_dir=tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["backend_settings"] == record["backend_settings"]
    assert written["backend_settings"]["window"] == 40 and written["backend_settings"]["dtype"] == "float32"
    assert written["suites"]["domain_mcq"]["truncated_prompts"] == 2  # both options of the long question
    assert written["summary"]["domain_metric"] == "domain_mcq.prob_correct"  # the continuous score leads by default
    markdown = (tmp_path / "eval" / "eval.md").read_text()
    assert "window 40 tokens, longer prompts cut from the left: domain_mcq 2." in markdown
    assert "| domain_mcq | truncated_prompts" not in markdown  # a count, not a score
