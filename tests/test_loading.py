"""Memory-lean loading (meta device -> FSDP2 shards -> each rank reads its slices) against the full-copy path.

Two gloo processes (torch.multiprocessing, no Ray) run the same set-up function as a Ray Train worker
(:func:`disc_ray.loading.build_sharded_models`) both ways on a tiny model with tied embeddings, then two DiSC
optimizer steps; rank 0 writes the full state dicts, buffers and losses for the test to compare.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from disc_ray.models import build_tiny_model, load_model_and_tokenizer
from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_up_and_step(rank: int, world_size: int, port: int, model_dir: str, texts: list[str], out: str,
                    variants: list[tuple[str, bool, str, bool]]) -> None:
    """One gloo rank: for each (name, lean, teacher_dtype, compile_blocks) variant, build the sharded models, gather their full
    state, then take two DiSC steps on this rank's documents; rank 0 saves everything to ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from disc_ray.config import TrainConfig
    from disc_ray.loading import build_sharded_models
    from disc_ray.loop import build_lr_scheduler, build_optimizer, normalizer_of, train_step
    from disc_ray.objectives import ObjectiveConfig, pack_batch
    from disc_ray.splits import SplitConfig, prepare_document

    results = {}
    for name, lean, teacher_dtype, compile_blocks in variants:
        torch.manual_seed(0)
        models = build_sharded_models(model_dir, needs_teacher=True, teacher_dtype=getattr(torch, teacher_dtype),
                                      device=torch.device("cpu"), mixed_precision=False, lean=lean,
                                      compile_blocks=compile_blocks)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        student_state = get_model_state_dict(models.student, options=options)
        teacher_state = get_model_state_dict(models.teacher, options=options)
        buffers = {n: b.clone() for n, b in models.student.named_buffers()}
        teacher_buffers = {n: b.clone() for n, b in models.teacher.named_buffers()}
        tied = models.student.lm_head.weight is models.student.model.embed_tokens.weight
        examples = [prepare_document(t, models.tokenizer, SplitConfig())[0] for t in texts]
        obj = ObjectiveConfig()
        train_cfg = TrainConfig(lr=3e-3)
        optimizer = build_optimizer(models.student, train_cfg)
        scheduler = build_lr_scheduler(optimizer, train_cfg, 2)
        losses = []
        for step in range(2):
            mine = [examples[i] for i in range(len(examples)) if i % world_size == rank]  # uneven: 3 docs over 2 ranks
            batch = [pack_batch(mine, obj)]
            count = torch.tensor([float(normalizer_of(batch, obj))], dtype=torch.float64)
            dist.all_reduce(count)
            metrics = train_step(models.student, models.teacher, batch, optimizer, scheduler, obj, normalizer=count.item())
            loss = torch.tensor([metrics["loss"]], dtype=torch.float64)
            dist.all_reduce(loss)
            losses.append(loss.item())
        results[name] = dict(loading=models.loading, reason=models.fallback_reason, student=student_state, teacher=teacher_state, buffers=buffers,
                             teacher_buffers=teacher_buffers, tied=tied, losses=losses,
                             teacher_dtypes={p.dtype for p in models.teacher.parameters()})
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def run_ranks(model_dir, texts, out, variants, world_size=2):
    mp.start_processes(set_up_and_step, args=(world_size, free_port(), str(model_dir), texts, str(out), variants),
                       nprocs=world_size, join=True, start_method="spawn")
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory, embedded_dir):
    # 3 layers: FSDP2 shards of uneven size; an odd hidden size so dim 0 does not split evenly over 2 ranks
    model, tokenizer = build_tiny_model(str(embedded_dir), num_layers=3, hidden_size=72, num_heads=4, num_kv_heads=2,
                                        intermediate_size=136, seed=3)
    assert model.config.tie_word_embeddings
    path = tmp_path_factory.mktemp("tied") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_lean_loading_gives_the_full_copy_paths_weights_buffers_and_losses(tmp_path, tied_model_dir, bioasq_passages):
    variants = [("full_copy", False, "float32", False), ("lean", True, "float32", False),
                ("lean_bf16", True, "bfloat16", False), ("full_copy_bf16", False, "bfloat16", False)]
    results = run_ranks(tied_model_dir, bioasq_passages[:3], tmp_path / "out.pt", variants)
    full, lean = results["full_copy"], results["lean"]
    assert (full["loading"], lean["loading"]) == ("full_copy", "lean"), lean["reason"]
    checkpoint = load_file(str(tied_model_dir / "model.safetensors"))
    # bit-identical initial weights, equal to the checkpoint's; the tied head is one parameter
    assert lean["tied"] and full["tied"]
    assert set(lean["student"]) == set(full["student"])
    for name, tensor in full["student"].items():
        torch.testing.assert_close(lean["student"][name], tensor, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(lean["teacher"][name], tensor, rtol=0, atol=0, msg=name)
        if name in checkpoint:
            torch.testing.assert_close(lean["student"][name], checkpoint[name].float(), rtol=0, atol=0, msg=name)
    # non-persistent buffers (rotary inv_freq) are recomputed, not left as to_empty's garbage
    assert any("inv_freq" in n for n in lean["buffers"])
    for name, buffer in full["buffers"].items():
        torch.testing.assert_close(lean["buffers"][name], buffer, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(lean["teacher_buffers"][name], buffer, rtol=0, atol=0, msg=name)
    # the same DiSC losses over two steps (the second depends on the first step's update)
    assert lean["losses"][0] > 0
    assert lean["losses"] == full["losses"], (lean["losses"], full["losses"])
    # the bf16 teacher: same weights either way, losses within bf16 error of the fp32 teacher's
    bf16, bf16_full = results["lean_bf16"], results["full_copy_bf16"]
    assert bf16["teacher_dtypes"] == {torch.bfloat16}
    for name, tensor in bf16_full["teacher"].items():
        torch.testing.assert_close(bf16["teacher"][name], tensor, rtol=0, atol=0, msg=name)
    assert bf16["losses"] == bf16_full["losses"]
    relative = [abs(a - b) / b for a, b in zip(bf16["losses"], lean["losses"])]
    print(f"bf16 teacher vs fp32 teacher: DiSC losses {bf16['losses']} vs {lean['losses']}; relative error {relative}")
    assert bf16["losses"] != lean["losses"]  # the teacher really ran in bf16
    assert max(relative) < 2e-2


@pytest.mark.slow
def test_compiled_decoder_blocks_give_the_same_losses(tmp_path, tied_model_dir, bioasq_passages):
    import shutil

    if shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    variants = [("eager", True, "float32", False), ("compiled", True, "float32", True)]
    results = run_ranks(tied_model_dir, bioasq_passages[:3], tmp_path / "out.pt", variants)
    eager, compiled = results["eager"]["losses"], results["compiled"]["losses"]
    print(f"compiled vs eager DiSC losses: {compiled} vs {eager}")
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-8)


def test_weights_that_do_not_match_the_parameters_one_to_one_are_found_before_anything_is_sharded(tmp_path, tied_model_dir):
    """What sends a model to the full-copy path: a renamed or reshaped weight, an unreadable dtype, no safetensors."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from disc_ray.loading import build_meta_model, checkpoint_shapes, safetensors_index, unmatched_weights

    config = AutoConfig.from_pretrained(tied_model_dir)
    model = build_meta_model(config, torch.float32, None, False)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again after init_empty_weights
    assert all(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    index = safetensors_index(tied_model_dir)
    assert unmatched_weights(model, checkpoint_shapes(index)) == []
    weights = load_file(str(tied_model_dir / "model.safetensors"))
    weights["model.norm.weight_renamed"] = weights.pop("model.norm.weight")
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"][:-1]
    weights["model.layers.1.mlp.up_proj.weight"] = weights["model.layers.1.mlp.up_proj.weight"].to(torch.float8_e4m3fn)
    save_file(weights, str(tmp_path / "model.safetensors"))
    shapes = checkpoint_shapes(safetensors_index(tmp_path))
    assert sorted(unmatched_weights(model, shapes)) == ["model.layers.0.mlp.up_proj.weight",
                                                        "model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    (tmp_path / "model.safetensors").unlink()
    assert safetensors_index(tmp_path) is None


# GPT-NeoX checkpoints store the head as ``embed_out.weight``; transformers 5 renames it to ``lm_head.weight`` on
# load. Lean loading reads names as they are, so it finds the mismatch before sharding and falls back.
RENAMED_ON_LOAD = {"gpt_neox": "lm_head.weight"}


def compare_architectures(rank: int, world_size: int, port: int, folders: dict[str, str], examples: list, out: str) -> None:
    """One gloo rank: every folder built lean and with full copies; rank 0 saves the full states, buffers, the
    DiSC loss of one packed batch (no step) and how each was loaded."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from disc_ray.loading import build_sharded_models
    from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch

    results = {}
    for model_type, folder in folders.items():
        for lean in (False, True):
            models = build_sharded_models(folder, needs_teacher=True, teacher_dtype=torch.float32,
                                          device=torch.device("cpu"), mixed_precision=False, lean=lean)
            state = get_model_state_dict(models.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            with torch.no_grad():
                loss = compute_loss(models.student, models.teacher, pack_disc_batch(examples), ObjectiveConfig()).loss
            dist.all_reduce(loss)
            results[model_type, lean] = dict(loading=models.loading, reason=models.fallback_reason, state=state,
                                             loss=loss.item(), buffers={n: b.clone() for n, b in models.student.named_buffers()})
        # data parallel: each rank its own documents, divided by the global document count (2 ranks == 1 process)
        with torch.no_grad():
            shard = compute_loss(models.student, models.teacher, pack_disc_batch(examples[rank::world_size]), ObjectiveConfig(),
                                 normalizer=len(examples)).loss
        dist.all_reduce(shard)
        results[model_type, "data_parallel"] = shard.item()
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_every_tested_architecture_loads_lean_to_the_full_copy_paths_weights_buffers_and_loss(tmp_path, tokenizer,
                                                                                                bioasq_passages):
    from disc_ray.splits import SplitConfig, prepare_document
    from test_architectures import ARCHITECTURES, REFUSED, save_tiny

    folders = {t: str(save_tiny(t, tmp_path / t, tokenizer)) for t in sorted(ARCHITECTURES) if t not in REFUSED}
    examples = [prepare_document(t, tokenizer, SplitConfig())[0] for t in bioasq_passages[:2]]
    mp.start_processes(compare_architectures, args=(2, free_port(), folders, examples, str(tmp_path / "out.pt")),
                       nprocs=2, join=True, start_method="spawn")
    results = torch.load(tmp_path / "out.pt", weights_only=False)
    for model_type in folders:
        full, lean = results[model_type, False], results[model_type, True]
        if model_type in RENAMED_ON_LOAD:  # transformers renames a checkpoint key on load: the full-copy path, said so
            assert lean["loading"] == "full_copy" and RENAMED_ON_LOAD[model_type] in lean["reason"], lean["reason"]
        else:
            assert lean["loading"] == "lean", (model_type, lean["reason"])
        assert set(lean["state"]) == set(full["state"]), model_type
        for name, tensor in full["state"].items():
            torch.testing.assert_close(lean["state"][name], tensor, rtol=0, atol=0, msg=f"{model_type} {name}")
        assert set(lean["buffers"]) == set(full["buffers"]), model_type
        for name, buffer in full["buffers"].items():
            torch.testing.assert_close(lean["buffers"][name], buffer, rtol=0, atol=0, msg=f"{model_type} {name}")
        assert lean["loss"] == full["loss"] and lean["loss"] > 0, (model_type, lean["loss"], full["loss"])
        student, _ = load_model_and_tokenizer(folders[model_type])  # one process, every document, unsharded
        with torch.no_grad():
            single = compute_loss(student, student, pack_disc_batch(examples), ObjectiveConfig()).loss.item()
        assert results[model_type, "data_parallel"] == pytest.approx(single, rel=1e-5), model_type
