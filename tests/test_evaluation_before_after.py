"""The demo's before/after table (disc_ray/evaluation/before_after.py): the formatting on a hand-made record,
the whole path (the runner's scoring of both models on synthetic probes + drift) on tiny models, and the
job's refusal of --before-after with a corpus of one's own."""

from __future__ import annotations

import json

import pytest
import torch

from disc_ray.evaluation.before_after import before_after_config, format_before_after, run_before_after


def test_table_shows_both_models_with_intervals_and_the_paired_change():
    record = {
        "bootstrap": {"confidence": 0.95},
        "suites": {"domain_mcq": {"n": 4, "prob_correct": 40.0, "ci": {"prob_correct": [30.0, 50.0]},
                                  "by_kind": {"restated": {"n": 2, "prob_correct": 55.0, "ci": {"prob_correct": [45.0, 65.0]}},
                                              "single": {"n": 2, "prob_correct": 25.0}}},
                   "drift": {"kl": 0.0123, "ci": {"kl": [0.01, 0.015]}}},
        "baseline": {"suites": {"domain_mcq": {"prob_correct": 30.0, "by_kind": {"restated": {"prob_correct": 28.0},
                                                                                 "single": {"prob_correct": 26.0}}},
                                "drift": {"kl": 0.0}}},
        "delta_ci": {"domain_mcq": {"by_kind.restated.prob_correct": {"delta": 27.0, "ci": [20.0, 34.0], "outside": True},
                                    "prob_correct": {"delta": 10.0, "ci": [-1.0, 21.0], "outside": False}}},
    }
    lines = format_before_after(record).splitlines()
    assert lines[0].split() == ["original", "[95%", "CI]", "adapted", "[95%", "CI]", "change", "[paired", "95%", "CI]"]
    restated, single, overall, drift = lines[1:5]
    assert restated.startswith("facts stated twice (restated)") and restated.endswith("+27.00 [+20.00, +34.00] *")
    assert "28.00" in restated and "55.00 [45.00, 65.00]" in restated
    assert single.endswith("-1.00")  # no paired interval in the record: the point change alone
    assert overall.endswith("+10.00 [-1.00, +21.00]")  # 0 inside: no star
    assert drift.startswith("drift KL(original || adapted)") and "0.0123 [0.0100, 0.0150]" in drift
    assert lines[5] == "" and "(restated 2, single 2)" in lines[6]
    assert not any(line.startswith("all probes, accuracy") or line.startswith("NLL") for line in lines)  # absent: left out


def test_before_after_on_tiny_models_scores_both_on_the_probes(tmp_path, tiny_model_dir, embedded_dir):
    from disc_ray.models import build_tiny_model
    from disc_ray.synthetic import write_corpus

    paths = write_corpus(tmp_path / "corpus", num_documents=3, seed=0)
    adapted, tokenizer = build_tiny_model(str(embedded_dir), seed=1)  # a different model: drift > 0
    adapted.save_pretrained(tmp_path / "adapted")
    tokenizer.save_pretrained(tmp_path / "adapted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = before_after_config(paths["probes"], drift_num_prompts=2, drift_max_new_tokens=6, device="cpu",
                                  bootstrap_resamples=200, cache_dir=str(tmp_path / "cache"))
        record = run_before_after(tmp_path / "adapted", tiny_model_dir, paths["probes"], cfg=cfg)
    finally:
        torch.set_num_threads(threads)
    probes = [json.loads(line) for line in paths["probes"].read_text().splitlines()]
    mcq = record["suites"]["domain_mcq"]
    assert mcq["n"] == len(probes) and set(mcq["by_kind"]) == {"restated", "single"}
    assert record["baseline"]["suites"]["drift"]["kl"] == pytest.approx(0.0, abs=1e-6) and record["suites"]["drift"]["kl"] > 0
    assert json.loads((tmp_path / "adapted" / "eval" / "eval.json").read_text())["name"] == "adapted"
    table = format_before_after(record)
    for label in ("facts stated twice (restated)", "facts stated once (single)", "all probes", "drift KL"):
        assert label in table
    change = record["delta_ci"]["domain_mcq"]["by_kind.restated.prob_correct"]
    assert f"{change['delta']:+.2f} [{change['ci'][0]:+.2f}, {change['ci'][1]:+.2f}]" in table


def test_before_after_refuses_a_corpus_of_ones_own(tmp_path, capsys):
    from disc_ray.adapt import main

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"text": "A document."}) + "\n")
    assert main(["--before-after", "--data.path", str(corpus)]) == 2
    assert "--before-after evaluates on the built-in synthetic corpus's probes" in capsys.readouterr().err
