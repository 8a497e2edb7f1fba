"""Token-budget steps (``train.max_tokens_per_step``): grouping, and 2 ranks == 1 rank when budgets split the
documents of a step unevenly over the ranks (gloo processes running the worker's set-up and step, no Ray)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from disc_ray.config import TrainConfig
from disc_ray.loop import group_by_token_budget, student_tokens
from disc_ray.objectives import ObjectiveConfig
from disc_ray.splits import DocumentExample, SplitConfig, prepare_document
from test_loading import free_port, tied_model_dir  # noqa: F401  (tied_model_dir: a fixture)


def example(split_lengths: list[int], prefix: int = 1) -> DocumentExample:
    spans, start = [], prefix
    for length in split_lengths:
        spans.append((start, start + length))
        start += length
    return DocumentExample(input_ids=list(range(start)), sentence_spans=[], split_spans=spans, num_special_prefix=prefix)


def test_group_by_token_budget_fills_up_to_the_budget_in_order_and_never_cuts_a_document():
    obj = ObjectiveConfig()
    docs = [example([10, 20]), example([5]), example([40]), example([100]), example([3]), example([2])]
    assert [student_tokens(d, obj) for d in docs] == [32, 6, 41, 101, 4, 3]
    groups = list(group_by_token_budget(docs, 50, obj))
    assert [[docs.index(d) for d in g] for g in groups] == [[0, 1], [2], [3], [4, 5]]  # 38 | 41 | 101 alone | 7
    ft = ObjectiveConfig(name="ft")
    assert student_tokens(docs[0], ft) == 31
    with pytest.raises(ValueError, match="max_tokens_per_step"):
        TrainConfig(max_tokens_per_step=1, grad_accum_steps=2)


def budget_steps(rank: int, world_size: int, port: int, model_dir: str, texts: list[str], budget: int,
                 schedule: list[list[list[int]]] | None, out: str) -> None:
    """One gloo rank: lean set-up, then DiSC steps. Without ``schedule``: this rank's documents (``texts[rank::world]``)
    grouped by ``budget``, as many steps as the rank with the fewest groups; with it, step k takes the documents
    ``schedule[k][rank]`` (indices into ``texts``). Rank 0 saves the losses and every rank's documents per step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from disc_ray.loading import build_sharded_models
    from disc_ray.loop import build_lr_scheduler, build_optimizer, normalizer_of, train_step
    from disc_ray.objectives import pack_batch

    torch.manual_seed(0)
    models = build_sharded_models(model_dir, needs_teacher=True, teacher_dtype=torch.float32, device=torch.device("cpu"),
                                  mixed_precision=False)
    obj, train_cfg = ObjectiveConfig(), TrainConfig(lr=3e-3)
    examples = [prepare_document(t, models.tokenizer, SplitConfig())[0] for t in texts]
    if schedule is None:
        mine = list(range(len(texts)))[rank::world_size]
        index_of = {id(examples[i]): i for i in mine}
        groups = [[index_of[id(d)] for d in g] for g in group_by_token_budget([examples[i] for i in mine], budget, obj)]
        count = torch.tensor([len(groups)])
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        groups = groups[: int(count)]
    else:
        groups = [step[rank] for step in schedule]
    optimizer = build_optimizer(models.student, train_cfg)
    scheduler = build_lr_scheduler(optimizer, train_cfg, len(groups))
    losses, taken = [], []
    for group in groups:
        batch = [pack_batch([examples[i] for i in group], obj)]
        units = torch.tensor([float(normalizer_of(batch, obj))], dtype=torch.float64)
        dist.all_reduce(units)
        loss = torch.tensor([train_step(models.student, models.teacher, batch, optimizer, scheduler, obj,
                                        normalizer=units.item())["loss"]], dtype=torch.float64)
        dist.all_reduce(loss)
        losses.append(loss.item())
        everyone = [None] * world_size
        dist.all_gather_object(everyone, group)
        taken.append(everyone)
    if rank == 0:
        torch.save({"losses": losses, "taken": taken}, out)
    dist.destroy_process_group()


def run(world_size, *args):
    mp.start_processes(budget_steps, args=(world_size, free_port(), *args), nprocs=world_size, join=True,
                       start_method="spawn")
    return torch.load(args[-1], weights_only=False)


@pytest.mark.slow
def test_two_ranks_with_uneven_token_budget_steps_equal_one_rank_with_the_same_documents(tmp_path, tied_model_dir,
                                                                                         bioasq_passages, tokenizer):
    texts = bioasq_passages[:8]
    sizes = sorted(student_tokens(prepare_document(t, tokenizer, SplitConfig())[0], ObjectiveConfig()) for t in texts)
    budget = sizes[len(sizes) // 2] * 2  # two median documents: groups of 1 to 3 documents
    two = run(2, str(tied_model_dir), texts, budget, None, str(tmp_path / "two.pt"))
    counts = [[len(g) for g in step] for step in two["taken"]]
    assert len(counts) >= 2 and any(a != b for a, b in counts), counts  # the budget split documents unevenly
    one = run(1, str(tied_model_dir), texts, budget, [[sum(step, [])] for step in two["taken"]], str(tmp_path / "one.pt"))
    print(f"documents per rank per step {counts}; losses 2 ranks {two['losses']} 1 rank {one['losses']}")
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-9)  # fp32 sums in another order after AdamW (as test_train)
    assert two["losses"][0] > 0


def test_the_step_plan_of_token_budget_steps_is_an_upper_bound_never_above_one_step_per_document():
    from disc_ray.config import AdaptConfig, load_config
    from disc_ray.train import plan_total_steps

    cfg = load_config(AdaptConfig, None, ["--workers.num_workers=2", "--train.max_tokens_per_step=1000"])
    assert plan_total_steps(100, cfg, student_tokens=20_000) == 2 * 10 + 1  # 10,000 tokens a rank, next-fit bound
    assert plan_total_steps(10, cfg, student_tokens=20_000) == 5  # 5 documents a rank: at most 5 steps
    off = load_config(AdaptConfig, None, ["--workers.num_workers=2", "--train.batch_size=2"])
    assert plan_total_steps(100, off, student_tokens=20_000) == 25


@pytest.mark.ray
def test_ray_train_with_a_token_budget_packs_several_documents_a_step_and_sees_each_once(tmp_path, tied_model_dir,
                                                                                           tokenizer, bioasq_passages):
    import json

    import ray

    from disc_ray.config import AdaptConfig, load_config
    from disc_ray.splits import example_to_row
    from disc_ray.train import build_trainer

    examples = [prepare_document(t, tokenizer, SplitConfig())[0] for t in bioasq_passages[:12]]
    rows = [example_to_row(e) for e in examples]
    budget = 3 * max(student_tokens(e, ObjectiveConfig()) for e in examples)  # at least 3 documents a step
    cfg = load_config(AdaptConfig, None, [f"--run.storage_path={tmp_path / 'runs'}", "--run.name=budget",
                                          "--workers.num_workers=2", f"--train.max_tokens_per_step={budget}"])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        result = build_trainer(cfg, ray.data.from_items(rows), total_steps=6, model_source=str(tied_model_dir)).fit()
    finally:
        ray.shutdown()
    assert result.error is None
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "budget" / "metrics.jsonl").read_text().splitlines()]
    per_step = [m["documents"] for m in metrics]
    assert per_step[0] >= 6 and sum(per_step) <= 12, per_step  # >= 3 a rank, every document at most once
    assert metrics[-1]["documents_seen"] == sum(per_step) and all(m["loss"] > 0 for m in metrics)
