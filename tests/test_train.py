"""Ray Train with real FSDP2 over 2 CPU (gloo) workers: equivalence with one process, failure and resume."""

import json
import threading
import time

import psutil
import pytest
import ray
import torch
from conftest import assert_two_ranks_match_one_process
from transformers import AutoModelForCausalLM

from disc_ray.config import AdaptConfig, TrainConfig, load_config
from disc_ray.loop import build_lr_scheduler, build_optimizer
from disc_ray.models import build_tiny_model
from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch
from disc_ray.splits import SplitConfig, example_to_row, prepare_document
from disc_ray.train import INITIAL_TRAIN_STATE, AppState, build_trainer, load_training_checkpoint, save_training_checkpoint


@pytest.fixture()
def tiny_dir(tmp_path, embedded_dir):
    model, tokenizer = build_tiny_model(str(embedded_dir))
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def config(tmp_path, *overrides):
    return load_config(AdaptConfig, None, [f"--run.storage_path={tmp_path / 'runs'}", "--workers.num_workers=2", *overrides])


def read_metrics(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
def test_two_fsdp_workers_match_one_process_and_export_reloads(local_ray, tmp_path, tiny_dir, tokenizer, bioasq_passages):
    texts = bioasq_passages[:4]
    # batch 2 per worker x 2 workers = all 4 documents every step, whatever rows Ray gives each rank
    result, distributed, single = assert_two_ranks_match_one_process(tmp_path, tiny_dir, tokenizer, texts, run_name="equiv",
                                                                     batch_size=2, epochs=3)
    assert distributed[-1] < distributed[0]

    exported = AutoModelForCausalLM.from_pretrained(result.checkpoint.path)
    assert (tmp_path / "runs" / "equiv" / "export" / "model.safetensors").exists()
    # The exported weights are the distributed run's: their DiSC loss equals the single-process model's. Compared
    # on the loss (a mean over every scored token), not per logit: after AdamW steps a near-zero gradient that
    # differs by fp32 summation order (2 ranks vs 1) can move a weight by up to lr, so per-element weights and
    # logits legitimately differ far more than the loss does.
    teacher, _ = build_tiny_model(str(tiny_dir))
    examples = [prepare_document(t, tokenizer, SplitConfig())[0] for t in texts]
    with torch.no_grad():
        exported_loss, single_loss = (compute_loss(m.eval(), teacher.eval(), pack_disc_batch(examples), ObjectiveConfig()).loss
                                      for m in (exported, single))
        initial_loss = compute_loss(teacher, teacher, pack_disc_batch(examples), ObjectiveConfig()).loss
    assert exported_loss.item() < initial_loss.item()  # the trained weights were exported, not the initial ones
    torch.testing.assert_close(exported_loss, single_loss, rtol=1e-4, atol=1e-7)


def kill_a_worker_once_checkpointed(run_dir, gate, killed):
    """Once Ray has registered a checkpoint of the run, SIGKILL one of its training worker processes, then open the gate."""
    deadline = time.time() + 300
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        while time.time() < deadline and not killed:
            if snapshot.exists() and "checkpoint_0000" in snapshot.read_text():
                # only this test's own cluster: its Ray processes descend from this pytest process
                for process in psutil.Process().children(recursive=True):
                    try:
                        if "RayTrainWorker" in " ".join(process.cmdline()):
                            process.kill()
                            killed.append(process.pid)
                            break
                    except psutil.Error:  # a process that ended meanwhile
                        continue
            time.sleep(0.02)
    finally:
        gate.touch()


def gated_rows(rows, gate, first_gated):
    """A dataset of ``rows`` (one per block) whose rows from index ``first_gated`` on are held back until ``gate``
    exists: the run cannot finish before the kill, however slow or fast the machine (no timing involved)."""

    def hold(row):
        while row["gate_index"] >= first_gated and not gate.exists():
            time.sleep(0.05)
        return {k: v for k, v in row.items() if k != "gate_index"}

    indexed = [dict(row, gate_index=i) for i, row in enumerate(rows)]
    return ray.data.from_items(indexed, override_num_blocks=len(indexed)).map(hold)


@pytest.mark.ray
def test_killed_worker_resumes_from_checkpoint_without_repeating_steps(local_ray, tmp_path, tiny_dir, tokenizer, bioasq_passages):
    rows = [example_to_row(e) for t in bioasq_passages[:32] for e in prepare_document(t, tokenizer, SplitConfig())]
    assert len(rows) == 32
    cfg = config(tmp_path, "--run.name=kill", "--run.checkpoint_every_n_steps=2", "--run.max_failures=1", "--train.lr=1e-3")
    gate, killed = tmp_path / "gate", []
    watcher = threading.Thread(target=kill_a_worker_once_checkpointed, args=(tmp_path / "runs" / "kill", gate, killed))
    watcher.start()
    # 2 workers x 1 document per step: steps 1-8 can run on the first 16 rows; the rest wait for the kill.
    result = build_trainer(cfg, gated_rows(rows, gate, first_gated=16), total_steps=16, model_source=str(tiny_dir)).fit()
    watcher.join()
    assert killed, "no worker was killed"
    assert result.error is None and result.metrics["step"] == 16
    steps = [m["step"] for m in read_metrics(tmp_path, "kill")]
    assert steps == list(range(1, 17)), steps  # every optimizer step once: none repeated, none skipped
    state = json.loads((tmp_path / "runs" / "kill" / "export" / "run.json").read_text())["train_state"]
    assert state["step"] == 16 and state["documents_seen"] == 32
    assert len(state["resumed_from_steps"]) == 1, state  # restored model + optimizer from a checkpoint, not from scratch
    (resumed_from,) = state["resumed_from_steps"]
    assert 2 <= resumed_from <= 8 and resumed_from % 2 == 0
    assert killed[0] not in {p.pid for p in psutil.process_iter()}


def build_app_state(model):
    train_cfg = TrainConfig(lr=1e-3, warmup_steps=4, lr_schedule="cosine")
    optimizer = build_optimizer(model, train_cfg)
    return AppState(model, optimizer, build_lr_scheduler(optimizer, train_cfg, total_steps=10))


@pytest.mark.core
def test_checkpoint_restores_model_optimizer_scheduler_and_reads_loop_state_over_the_initial_one(tmp_path, embedded_dir):
    saved = build_app_state(build_tiny_model(str(embedded_dir), seed=1)[0])
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    for _ in range(2):  # two AdamW steps: moments and step counts to restore; the scheduler mid-warmup
        saved.model(input_ids=ids, labels=ids).loss.backward()
        saved.optimizer.step()
        saved.scheduler.step()
        saved.optimizer.zero_grad()
    # the loop state of an older checkpoint: keys added since (documents_seen, resumed_from_steps) are missing
    saved.loop = {"step": 2, "epoch": 1, "batches_in_epoch": 3}
    save_training_checkpoint(tmp_path / "ckpt", saved)

    restored = build_app_state(build_tiny_model(str(embedded_dir), seed=2)[0])
    loop = load_training_checkpoint(tmp_path / "ckpt", restored)
    assert loop == {**INITIAL_TRAIN_STATE, "step": 2, "epoch": 1, "batches_in_epoch": 3}
    assert restored.scheduler.last_epoch == 2 and restored.scheduler.get_last_lr() == saved.scheduler.get_last_lr()
    for name, param in saved.model.named_parameters():
        torch.testing.assert_close(dict(restored.model.named_parameters())[name], param, rtol=0, atol=0)
    saved_state, restored_state = saved.optimizer.state_dict(), restored.optimizer.state_dict()
    assert restored_state["param_groups"] == saved_state["param_groups"]
    for index, state in saved_state["state"].items():
        torch.testing.assert_close(restored_state["state"][index]["exp_avg_sq"], state["exp_avg_sq"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="has no loop state"):
        load_training_checkpoint(tmp_path, restored)  # not a checkpoint directory
