"""Replay (disc_ray/replay.py): the packed loss with replay examples equals a plain per-example reference, gradients
included; the mixing schedule; the sources (a chat JSONL, or the model's own cached responses)."""

import copy
import json

import pytest
import torch

from disc_ray.config import TrainConfig
from disc_ray.data.generation import GenerationSettings
from disc_ray.loop import normalizer_of, pack_with_replay, run_adaptation
from disc_ray.objectives import ObjectiveConfig, compute_loss
from disc_ray.reference import reference_lm_loss
from disc_ray.replay import (ReplayExample, build_replay_pool, load_replay_records, reference_replay_loss, replay_due, take_replay,
                             tokenize_replay)
from disc_ray.splits import SplitConfig, prepare_document

CHATS = [([{"role": "user", "content": "Name a fruit."}], "An apple."),
         ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}], "It is 4, of course.")]


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kl_weight", [0.0, 0.5])
def test_loss_with_replay_equals_per_example_reference(student_teacher, tokenizer, kl_weight):
    student, teacher = student_teacher
    examples = [e for t in ["The kidney filters blood. It makes urine.", "Insulin lowers glucose."]
                for e in prepare_document(t, tokenizer, SplitConfig(), 2048, with_splits=False)]
    pool, skipped = tokenize_replay(CHATS, tokenizer, 2048)
    assert len(pool) == 2 and not skipped
    cfg = ObjectiveConfig(name="ft", replay="x.jsonl", replay_ratio=1.0, replay_kl_weight=kl_weight, chunk_size=6)
    batch = pack_with_replay(examples, cfg, pool, documents_before=0)
    assert batch.replay.num_documents == 2 and normalizer_of([batch], cfg) == 4
    out = compute_loss(student, teacher, batch, cfg)
    out.loss.backward()
    ours = grads(student)
    student.zero_grad()
    reference = (reference_lm_loss(student, None, examples) * 2 + reference_replay_loss(student, teacher, pool, kl_weight)) / 4
    reference.backward()
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-6)
    expected = grads(student)
    assert ours.keys() == expected.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    # the response tokens, and only they, are scored: the chat template's prompt is context
    response_ids = tokenizer("An apple.", add_special_tokens=False).input_ids
    assert batch.replay.target_ids[: len(response_ids)].tolist() == response_ids
    assert batch.replay.target_ids[len(response_ids)].item() == tokenizer.eos_token_id


def test_mixing_schedule_gives_the_ratio_and_ranks_take_disjoint_items():
    ratio, sizes = 0.3, [1, 2, 1, 3, 1, 2]
    taken, before = [], 0
    for size in sizes:
        first, count = replay_due(before, size, ratio)
        assert first == len(taken)
        taken += list(range(first, first + count))
        before += size
    assert len(taken) == int(ratio * sum(sizes)) == 3
    pool = [ReplayExample([i, i], 1) for i in range(5)]
    rank0 = [e.input_ids[0] for e in take_replay(pool, 0, 4, rank=0, world_size=2)]
    rank1 = [e.input_ids[0] for e in take_replay(pool, 0, 2, rank=1, world_size=2)]
    assert rank0 == [0, 2, 4, 1] and rank1 == [1, 3]


def test_replay_records_in_both_formats_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "replay.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}) + "\n"
                    + json.dumps({"prompt": "Name a colour.", "response": "Blue."}) + "\n")
    records = load_replay_records(str(path))
    assert records == [([{"role": "user", "content": "Hi"}], "Hello!"), ([{"role": "user", "content": "Name a colour."}], "Blue.")]
    path.write_text(path.read_text() + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(ValueError, match="line 3"):
        load_replay_records(str(path))


def test_self_replay_is_generated_once_then_cached_and_trained_on(tiny_model, tokenizer, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Name a fruit.", "Say hello.", "Count to three."]))
    cfg = ObjectiveConfig(name="ft", replay="self", replay_prompts=str(prompts), replay_ratio=1.0,
                          generation=GenerationSettings(max_new_tokens=5, cache_dir=str(tmp_path / "cache")))
    lines = []
    first = build_replay_pool(cfg, tokenizer, 2048, model=tiny_model, log=lines.append)
    assert len(first) == 3 and "replay: 3 examples from self" in lines[-1]
    generated = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(generated) == 3
    second = build_replay_pool(cfg, tokenizer, 2048, model=tiny_model, log=lines.append)
    assert [e.input_ids for e in second] == [e.input_ids for e in first]
    assert sorted((tmp_path / "cache").rglob("*.json")) == generated
    documents = ["The kidney filters blood. It makes urine.", "Insulin lowers glucose."]
    plain = run_adaptation(copy.deepcopy(tiny_model), tokenizer, documents, obj_cfg=ObjectiveConfig(name="ft"),
                           train_cfg=TrainConfig(batch_size=2), log=lambda *_: None)
    with_replay = run_adaptation(tiny_model, tokenizer, documents, obj_cfg=cfg, train_cfg=TrainConfig(batch_size=2), log=lambda *_: None)
    step = with_replay.history[0]
    assert step["documents"] == 2 and step["replay_loss"] > 0 and plain.history[0]["replay_loss"] == 0
    assert step["loss"] == pytest.approx(step["ce"] + step["replay_loss"], rel=1e-5)  # the terms add up to the loss
    assert abs(plain.history[0]["loss"] - with_replay.history[0]["loss"]) > 1e-3  # same model, same documents: the replay
