"""The generation stage (disc_ray/data/generation.py) and the ``rephrase`` / ``cd_base`` baselines built on it: the cache,
the empty / truncated counts, and each objective's packed loss against a plain per-document reference."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from disc_ray.data import generation as gen
from disc_ray.data.config import GenerationCounts
from disc_ray.data.generation import GenerationSettings, generate_for_documents, module_identity
from disc_ray.data.prepare import prepare_transfer_documents
from disc_ray.evaluation.backends import HFBackend
from disc_ray.loop import run_adaptation
from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_batch
from disc_ray.reference import reference_lm_loss
from disc_ray.splits import SplitConfig, prepare_document


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def backend_of(model, tokenizer):
    return HFBackend(copy.deepcopy(model), tokenizer, batch_size=1, progress=False)


def run(backend, documents, settings, model_id, task="rephrase"):
    counts = GenerationCounts()
    out = generate_for_documents(documents, backend, task, settings, model_id, progress=False, counts=counts)
    return out, counts


def test_cache_second_run_generates_nothing_and_template_or_sampling_changes_miss(tiny_model, tokenizer, tmp_path, monkeypatch):
    documents = ["Aspirin inhibits cyclooxygenase. It reduces fever.", "The liver makes bile. Bile digests fat."]
    settings = GenerationSettings(max_new_tokens=5, cache_dir=str(tmp_path / "cache"))
    backend, model_id = backend_of(tiny_model, tokenizer), module_identity(tiny_model)
    first, counts = run(backend, documents, settings, model_id)
    assert (counts.generated, counts.cached) == (2, 0) and backend.stats.prompts == 2
    second, counts = run(backend, documents, settings, model_id)
    assert (counts.generated, counts.cached) == (0, 2) and backend.stats.prompts == 2  # the engine was not called
    assert [g.text for g in second] == [g.text for g in first] and all(g.cached for g in second)
    for changed in (dict(top_p=0.9), dict(temperature=0.7), dict(max_new_tokens=6), dict(seed=1)):
        _, counts = run(backend, documents, dataclasses.replace(settings, **changed), model_id)
        assert counts.generated == 2, changed
    _, counts = run(backend, documents, settings, model_id, task="continue")  # another template
    assert counts.generated == 2
    monkeypatch.setattr(gen, "REPHRASE_USER", "Paraphrase this:\n{document}")
    _, counts = run(backend, documents, settings, model_id)
    assert counts.generated == 2
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.model.embed_tokens.weight.mul_(1.01)
    assert module_identity(other) != model_id


def test_same_document_gets_the_same_text_alone_or_in_a_batch(tiny_model, tokenizer, tmp_path):
    settings = GenerationSettings(max_new_tokens=6)
    backend = backend_of(tiny_model, tokenizer)
    alone, _ = run(backend, ["The heart pumps blood."], dataclasses.replace(settings, cache_dir=str(tmp_path / "a")), "m")
    batch, _ = run(backend, ["Cells divide.", "The heart pumps blood."], dataclasses.replace(settings, cache_dir=str(tmp_path / "b")), "m")
    assert alone[0].text == batch[1].text


def eos_first_model(model, tokenizer):
    """The tiny model edited so that end-of-sequence is its most likely next token everywhere: hidden coordinate 0 is a
    large constant (embedding column 0, never written by the layers), the final norm keeps only it, and the (tied) head
    scores end-of-sequence twice as high on it as any other token."""
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[eos, 0] = 20.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
    return model


def test_empty_and_truncated_generations_are_counted(tiny_model, tokenizer, tmp_path):
    settings = GenerationSettings(max_new_tokens=3, cache_dir=str(tmp_path / "cache"))  # sampled: random tokens, never EOS
    out, counts = run(backend_of(tiny_model, tokenizer), ["Cells divide.", "Blood clots."], settings, "random")
    assert counts.truncated == 2 and counts.empty == 0 and all(g.generated_tokens == 3 for g in out)
    out, counts = run(backend_of(eos_first_model(tiny_model, tokenizer), tokenizer), ["Cells divide."], settings, "eos")
    assert counts.empty == 1 and counts.truncated == 0 and out[0].text == "" and out[0].generated_tokens == 1


def test_in_process_run_skips_and_counts_empty_generations(tiny_model, tokenizer, tmp_path):
    cfg = ObjectiveConfig(name="rephrase", generation=GenerationSettings(max_new_tokens=3, cache_dir=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="generation_empty=2"):
        run_adaptation(eos_first_model(tiny_model, tokenizer), tokenizer, ["Cells divide.", "Blood clots."], obj_cfg=cfg, log=lambda *_: None)


def lm_examples(texts, tokenizer):
    return [e for t in texts for e in prepare_document(t, tokenizer, SplitConfig(seed=7), 2048, with_splits=False)]


def test_rephrase_loss_is_cross_entropy_on_the_rewrite(student_teacher, tokenizer):
    student, _ = student_teacher
    examples = lm_examples(["A rewritten article about the kidney. It filters blood.", "Another rewrite: insulin lowers glucose."], tokenizer)
    cfg = ObjectiveConfig(name="rephrase", chunk_size=7)
    out = compute_loss(student, None, pack_batch(examples, cfg), cfg)
    out.loss.backward()
    ours = grads(student)
    student.zero_grad()
    reference = reference_lm_loss(student, None, examples)
    reference.backward()
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-6)
    for name, expected in grads(student).items():
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5, msg=name)


def reference_cd_base_loss(student, teacher, pairs, tokenizer, temperature):
    """Per document, full logits: the teacher reads document + continuation, the student the continuation alone
    (after the special prefix); T^2 KL(teacher/T || student/T) averaged over continuation tokens 2..L, then documents."""
    losses = []
    for document, continuation in pairs:
        special = tokenizer("x", add_special_tokens=True).input_ids[:-1] if tokenizer.bos_token_id is not None and tokenizer("x").input_ids[0] == tokenizer.bos_token_id else []
        doc = tokenizer(document, add_special_tokens=False).input_ids
        cont = tokenizer(continuation, add_special_tokens=False).input_ids
        with torch.no_grad():
            t = teacher(input_ids=torch.tensor([special + doc + cont])).logits[0, len(special) + len(doc): -1]
        s = student(input_ids=torch.tensor([special + cont])).logits[0, len(special): -1]
        kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True, reduction="batchmean")
        losses.append(kl * temperature**2)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_cd_base_packed_loss_equals_per_document_reference(student_teacher, tokenizer, temperature):
    student, teacher = student_teacher
    pairs = [("The pancreas makes insulin. Insulin lowers glucose.", " In diabetes this fails, and glucose stays high."),
             ("Bile is made in the liver.", " It is stored in the gallbladder and released after meals.")]
    results = prepare_transfer_documents([d for d, _ in pairs], [c for _, c in pairs], tokenizer)
    examples = [r[0] for r in results]
    for example, (_, continuation) in zip(examples, pairs):
        (start, end), = example.split_spans
        assert example.input_ids[start:end] == tokenizer(continuation, add_special_tokens=False).input_ids and end == len(example.input_ids)
    cfg = ObjectiveConfig(name="cd_base", cd_base_temperature=temperature, chunk_size=5)
    out = compute_loss(student, teacher, pack_batch(examples, cfg), cfg)
    out.loss.backward()
    ours = grads(student)
    student.zero_grad()
    reference = reference_cd_base_loss(student, teacher, pairs, tokenizer, temperature)
    reference.backward()
    assert out.loss.item() > 1e-4
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-6)
    expected = grads(student)
    assert ours.keys() == expected.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_transfer_rows_cut_the_continuation_and_keep_the_end_of_a_long_document(tokenizer):
    document, continuation = " ".join(f"word{i}" for i in range(200)), " ".join(f"next{i}" for i in range(50))
    (example,), = prepare_transfer_documents([document], [continuation], tokenizer, max_length=64, max_transfer_tokens=20)
    (start, end), = example.split_spans
    cont_ids = tokenizer(continuation, add_special_tokens=False).input_ids
    doc_ids = tokenizer(document, add_special_tokens=False).input_ids
    assert example.input_ids[start:end] == cont_ids[:20] and len(example.input_ids) == 64
    assert example.input_ids[example.num_special_prefix:start] == doc_ids[-(start - example.num_special_prefix):]
    too_short, no_room = prepare_transfer_documents([document, document], ["x", continuation], tokenizer, max_length=20,
                                                    max_transfer_tokens=20)
    assert too_short.reason == "transfer_too_short" and no_room.reason == "no_context_room"


@pytest.mark.parametrize("name", ["rephrase", "cd_base"])
def test_in_process_adaptation_generates_then_trains(tiny_model, tokenizer, tmp_path, name):
    from disc_ray.config import TrainConfig

    cfg = ObjectiveConfig(name=name, max_transfer_tokens=8,
                          generation=GenerationSettings(max_new_tokens=8, cache_dir=str(tmp_path / "cache")))
    documents = ["The pancreas makes insulin. Insulin lowers glucose.", "Bile is made in the liver. It digests fat."]
    before = copy.deepcopy(tiny_model)
    result = run_adaptation(tiny_model, tokenizer, documents, obj_cfg=cfg, train_cfg=TrainConfig(lr=1e-3, batch_size=2),
                            log=lambda *_: None)
    assert result.corpus.generation["generated"] == 2 and result.corpus.generation["truncated"] == 2
    assert len(result.corpus.examples) == 2 and result.history[0]["loss"] > 0
    key = "kl" if name == "cd_base" else "ce"
    assert result.history[0][key] > 0
    assert any(not torch.equal(p, q) for p, q in zip(tiny_model.parameters(), before.parameters()))


@pytest.mark.ray
def test_ray_data_stage_caches_counts_and_builds_transfer_rows(local_ray, tiny_model_dir, tmp_path, bioasq_passages):
    """The pipeline's generation stage (Ray Data actors): cd_base rows are document + continuation with one split; a
    second build (another output folder) takes every generation from the cache; empty ones are rejects."""
    import json

    from disc_ray.data import DataConfig, build_training_dataset
    from disc_ray.data.generation import GenerationPlan

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in bioasq_passages[:2]))
    plan = GenerationPlan("continue", GenerationSettings(max_new_tokens=6, cache_dir=str(tmp_path / "cache")), str(tiny_model_dir), 4)
    reports = []
    for run_index in range(2):
        data = DataConfig(path=str(corpus), output_dir=str(tmp_path / f"rows{run_index}"))
        dataset, report = build_training_dataset(data, SplitConfig(), with_splits=False, tokenizer=str(tiny_model_dir), generation=plan)
        reports.append(report)
    assert reports[0].generation == {"generated": 2, "cached": 0, "empty": 0, "truncated": 2}
    assert reports[1].generation == {"generated": 0, "cached": 2, "empty": 0, "truncated": 2}
    rows = dataset.take_all()
    assert len(rows) == 2 and all(len(r["split_starts"]) == 1 and r["split_ends"][0] == len(r["input_ids"]) and
                                  r["split_ends"][0] - r["split_starts"][0] == 4 for r in rows)


@pytest.mark.parametrize("task", ["rephrase", "continue"])
def test_pipeline_udfs_in_process_give_rows_of_the_generated_text_and_rejects_for_empty(tiny_model_dir, tokenizer, tmp_path, task):
    """GenerateBlock then prepare_block (the Ray Data stages' functions, called here without Ray): rephrase rows are the
    rewrite's tokens, continue rows document + continuation with one split; a reject before the stage stays a reject."""
    import pyarrow as pa

    from disc_ray.data.cleaning import CLEAN_SCHEMA
    from disc_ray.data.generation import GenerateBlock, GenerationPlan
    from disc_ray.data.prepare import prepare_block

    texts = ["The pancreas makes insulin. Insulin lowers glucose.", None]
    rows = [dict(text=t, source="c.jsonl", row=i, line=i + 1, file_index=0, reason="" if t else "not_text", detail="",
                 preview="", doc_id=str(i), doc_hash=i, order_key=i, unicode_normalized=False, whitespace_collapsed=False)
            for i, t in enumerate(texts)]
    block = pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA)
    plan = GenerationPlan(task, GenerationSettings(max_new_tokens=6, cache_dir=str(tmp_path / "cache")), str(tiny_model_dir), 4)
    generated = GenerateBlock(plan, {"normalize_unicode": "NFKC", "collapse_whitespace": True})(block)
    assert generated.column("generation_cached").to_pylist() == [False, None]
    out = prepare_block(generated, tokenizer_source=str(tiny_model_dir), split={}, max_length=2048, with_splits=False, strict=False,
                        line_based=False, threads=1, max_transfer_tokens=4).to_pylist()
    kept, rejected = [r for r in out if r["status"] == "kept"], [r for r in out if r["status"] == "rejected"]
    assert len(kept) == 1 and [r["reason"] for r in rejected] == ["not_text"] and rejected[0]["generation_cached"] is None
    document_ids = tokenizer(texts[0], add_special_tokens=False).input_ids
    if task == "rephrase":
        rewrite = generated.column("text").to_pylist()[0]
        assert rewrite != texts[0] and kept[0]["input_ids"][-len(tokenizer(rewrite, add_special_tokens=False).input_ids):] \
            == tokenizer(rewrite, add_special_tokens=False).input_ids and not kept[0]["split_starts"]
    else:
        assert kept[0]["input_ids"][: len(document_ids)] == document_ids and kept[0]["split_starts"] == [len(document_ids)]
        assert kept[0]["split_ends"] == [len(document_ids) + 4] == [len(kept[0]["input_ids"])]
    assert kept[0]["generation_truncated"] is True
