"""The ``lora`` baseline (disc_ray/lora.py): CE through PEFT adapters on a frozen base, merged at export."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from disc_ray.config import AdaptConfig, ConfigError, TrainConfig, load_config
from disc_ray.export import export_model
from disc_ray.lora import apply_lora, merged_state_dict, parameter_counts
from disc_ray.loop import run_adaptation
from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_batch
from disc_ray.reference import reference_lm_loss
from disc_ray.splits import SplitConfig, prepare_document

NO_DROPOUT = ObjectiveConfig(name="lora", lora_dropout=0.0, chunk_size=50)


def lm_examples(texts, tokenizer):
    return [e for t in texts for e in prepare_document(t, tokenizer, SplitConfig(seed=7), 2048, with_splits=False)]


def expected_adapter_parameters(model, rank=16):
    """r x (in + out) per linear layer of the decoder (``all-linear`` leaves the output head out)."""
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name != "lm_head")


def randomize_adapters(model, seed=0):
    """PEFT starts B at zero (the adapted model == the base); nonzero B makes merge and gradients non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def test_lora_loss_and_adapter_gradients_equal_full_logits_cross_entropy(tiny_model, tokenizer, bioasq_passages):
    """The packed, chunked CE through the adapters == plain per-document CE on the PEFT model's full logits."""
    model = apply_lora(tiny_model, NO_DROPOUT)
    randomize_adapters(model)
    examples = lm_examples(bioasq_passages[:3], tokenizer)
    out = compute_loss(model, None, pack_batch(examples, NO_DROPOUT), NO_DROPOUT)
    out.loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference_lm_loss(model, None, examples).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert ours.keys() == expected.keys() and ours and all(".lora_" in n for n in ours)  # the base gets no gradient
    torch.testing.assert_close(out.loss, reference_lm_loss(model, None, examples), rtol=1e-5, atol=1e-5)
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert max(g.abs().max().item() for n, g in ours.items() if "lora_A" in n) > 0


def test_training_changes_only_the_adapters_and_the_merged_export_gives_the_adapted_logits(tiny_model, tokenizer,
                                                                                         bioasq_passages, tmp_path):
    initial = copy.deepcopy(tiny_model.state_dict())
    result = run_adaptation(tiny_model, tokenizer, bioasq_passages[:3], train_cfg=TrainConfig(lr=1e-2, batch_size=1),
                            obj_cfg=ObjectiveConfig(name="lora"), output_dir=tmp_path / "out", log=lambda *_: None)
    adapted = result.model
    assert len(result.history) == 3
    trained = adapted.state_dict()
    for key, value in initial.items():  # every base weight is bit-identical
        peft_key = next(k for k in (f"base_model.model.{key}", f"base_model.model.{key.replace('.weight', '.base_layer.weight')}")
                        if k in trained)
        torch.testing.assert_close(trained[peft_key], value, rtol=0, atol=0, msg=key)
    adapters = {k: v for k, v in trained.items() if ".lora_" in k}
    assert adapters and all(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at 0: it moved
    counts = json.loads((tmp_path / "out" / "run.json").read_text())["parameters"]
    assert counts["trainable_parameters"] == sum(v.numel() for v in adapters.values()) == expected_adapter_parameters(
        AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    assert counts["total_parameters"] == sum(p.numel() for p in adapted.parameters())

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert not any("lora" in k for k in exported.state_dict())
    ids = torch.tensor([prepare_document(bioasq_passages[5], tokenizer, SplitConfig(), 2048, with_splits=False)[0].input_ids[:200]])
    with torch.no_grad():
        adapted_logits = adapted.eval()(input_ids=ids).logits  # eval: the adapters' dropout off, as in evaluation
        exported_logits = exported.eval()(input_ids=ids).logits
    torch.testing.assert_close(exported_logits, adapted_logits, rtol=1e-5, atol=1e-5)
    for key, value in initial.items():  # and the merge changed the weights the adapters act on
        if key.endswith("q_proj.weight"):
            assert (exported.state_dict()[key] - value).abs().max() > 1e-6, key


def test_merged_state_dict_equals_peft_merge_and_unload(tiny_model, tmp_path, tokenizer):
    model = apply_lora(tiny_model, NO_DROPOUT)
    randomize_adapters(model, seed=3)
    ours = merged_state_dict(model)
    theirs = copy.deepcopy(model).merge_and_unload().state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-7, msg=key)
    export_model(model, tokenizer, tmp_path / "plain")  # a PEFT model exports merged, whatever the caller passes
    assert (tmp_path / "plain" / "model.safetensors").exists() and not (tmp_path / "plain" / "adapter_config.json").exists()


def test_lora_keys_are_validated_and_both_new_objectives_are_accepted():
    cfg = load_config(AdaptConfig, None, ["--objective.name=lora", "--objective.lora_rank=8", "--objective.lora_target_modules=q_proj,v_proj"])
    assert cfg.objective.lora_rank == 8 and not cfg.objective.needs_teacher
    assert load_config(AdaptConfig, None, ["--objective.name", "talr"]).objective.name == "talr"
    for bad in (["--objective.lora_rank=0"], ["--objective.lora_dropout=1"], ["--objective.lora_alpha=0"]):
        with pytest.raises(ConfigError, match="objective.lora"):
            load_config(AdaptConfig, None, bad)


def test_parameter_counts_of_a_plain_model_count_everything(tiny_model):
    counts = parameter_counts(tiny_model)
    assert counts["trainable_parameters"] == counts["total_parameters"] == sum(p.numel() for p in tiny_model.parameters())



def test_a_lora_training_checkpoint_is_read_merged_for_the_sweeps_drift(tiny_model, tmp_path):
    """A sweep measures drift at each training checkpoint (DCP of the PEFT model's state): read through the trial's
    objective, it gives a plain model with the adapted model's logits (a plain copy of the original cannot load it)."""
    from disc_ray.loop import build_lr_scheduler, build_optimizer
    from disc_ray.train import AppState, save_training_checkpoint
    from disc_ray.tuning.trial import load_checkpoint_model

    original = copy.deepcopy(tiny_model)
    model = apply_lora(tiny_model, NO_DROPOUT, seed=5)
    randomize_adapters(model, seed=5)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    save_training_checkpoint(tmp_path / "ckpt", AppState(model, optimizer, build_lr_scheduler(optimizer, TrainConfig(), 10)))
    loaded = load_checkpoint_model(tmp_path / "ckpt", original, NO_DROPOUT)
    assert type(loaded) is type(original) and not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        assert (loaded(input_ids=ids).logits - original(input_ids=ids).logits).abs().max() > 1e-3
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    with pytest.raises(CheckpointException, match="Missing key"):
        load_checkpoint_model(tmp_path / "ckpt", original)  # without the objective: the keys do not match


@pytest.mark.ray
def test_two_fsdp_workers_match_one_process_and_export_merged(local_ray, tmp_path, tiny_model_dir, tokenizer, bioasq_passages):
    """FSDP2 over 2 gloo workers == one process for ``lora``, loss per step; the export is a plain merged model.

    ``lora_dropout=0`` here: with the paper's 0.1 each process draws its own dropout masks (another RNG stream per
    rank, documents on other ranks than in the single process), so the runs would legitimately differ."""
    import ray

    from disc_ray.splits import example_to_row
    from disc_ray.train import build_trainer

    texts = bioasq_passages[:4]
    rows = [example_to_row(prepare_document(t, tokenizer, SplitConfig(), 2048, with_splits=False)[0]) for t in texts]
    # batch 2 per worker x 2 workers = all 4 documents every step, whatever rows Ray gives each rank
    cfg = load_config(AdaptConfig, None, [f"--run.storage_path={tmp_path / 'runs'}", "--workers.num_workers=2", "--run.name=lora",
                                          "--objective.name=lora", "--objective.lora_dropout=0", "--train.lr=3e-3",
                                          "--train.batch_size=2", "--train.epochs=3"])
    result = build_trainer(cfg, ray.data.from_items(rows), total_steps=3, model_source=str(tiny_model_dir)).fit()
    assert result.error is None
    distributed = [json.loads(line)["loss"] for line in (tmp_path / "runs" / "lora" / "metrics.jsonl").read_text().splitlines()]

    single_cfg = ObjectiveConfig(name="lora", lora_dropout=0.0)
    local = run_adaptation(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, texts, obj_cfg=single_cfg,
                           train_cfg=TrainConfig(lr=3e-3, batch_size=4, epochs=3), log=lambda *_: None)
    assert len(distributed) == 3 and distributed[-1] < distributed[0]
    torch.testing.assert_close(torch.tensor(distributed), torch.tensor([h["loss"] for h in local.history]), rtol=1e-4, atol=1e-7)
    counts = parameter_counts(local.model)
    assert result.metrics["trainable_parameters"] == counts["trainable_parameters"] < counts["total_parameters"]
    assert result.metrics["total_parameters"] == counts["total_parameters"]

    exported = AutoModelForCausalLM.from_pretrained(result.checkpoint.path)
    assert not any("lora" in k for k in exported.state_dict())
    examples = lm_examples(texts, tokenizer)
    with torch.no_grad():
        exported_loss, single_loss = (compute_loss(m.eval(), None, pack_batch(examples, single_cfg), single_cfg).loss
                                      for m in (exported, local.model))
        initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        initial_loss = compute_loss(initial, None, pack_batch(examples, single_cfg), single_cfg).loss
    assert exported_loss.item() < initial_loss.item()  # the merged adapters were exported, not the base alone
    torch.testing.assert_close(exported_loss, single_loss, rtol=1e-4, atol=1e-7)
