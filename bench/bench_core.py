"""Benchmark of the DiSC core on the embedded default (SmolLM2-135M-Instruct), measured in one run.

Prints ratios, never asserts times:
  1. time per document (forward + backward): packed DiSC vs the per-split reference loop (2k passes),
     and DiSC vs ``ft``, at equal documents (BioASQ passages, k=5 sentence_boundary splits);
  2. peak extra memory of the chunked KL vs the naive full-logits KL at 2048 scored tokens,
     each measured in its own subprocess (the process's own RSS high-water mark, VmHWM, on CPU;
     ``max_memory_allocated`` on GPU).

    python bench/bench_core.py [--documents 12] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"


def load_passages(n: int) -> list[str]:
    rows = [json.loads(line) for line in BIOASQ.read_text().splitlines() if line.strip()]
    return [row["meta"]["context"] for row in rows[:n]]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_per_document(step, examples, device, repeats=1) -> float:
    step(examples[:1])  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        for example in examples:
            step([example])
    synchronize(device)
    return (time.perf_counter() - started) / (len(examples) * repeats)


def bench_time(args) -> dict:
    from disc_ray.loop import build_teacher
    from disc_ray.models import load_model_and_tokenizer
    from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch, pack_lm_batch, reference_disc_loss
    from disc_ray.splits import SplitConfig, prepare_document

    torch.set_num_threads(args.threads) if args.threads else None
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", dtype=args.dtype, device=args.device)
    teacher = build_teacher(model)
    passages = load_passages(args.documents)
    disc_examples = [prepare_document(t, tokenizer, SplitConfig(num_splits=5))[0] for t in passages]
    lm_examples = [prepare_document(t, tokenizer, SplitConfig(), with_splits=False)[0] for t in passages]
    disc_cfg, ft_cfg = ObjectiveConfig(name="disc"), ObjectiveConfig(name="ft")

    def packed_disc(batch):
        compute_loss(model, teacher, pack_disc_batch(batch).to(args.device), disc_cfg).loss.backward()

    def cpu_reference_disc(batch):
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            reference_disc_loss(model, teacher, batch, temperature=2.0).backward()

    def ft(batch):
        compute_loss(model, teacher, pack_lm_batch(batch).to(args.device), ft_cfg).loss.backward()

    # the reference builds CPU tensors; on CUDA its ids move on the fly
    reference_disc = _cuda_reference(model, teacher) if args.device == "cuda" else cpu_reference_disc
    results = {
        "documents": len(passages),
        "splits_per_document": sum(len(e.split_spans) for e in disc_examples) / len(disc_examples),
        "tokens_per_document": sum(len(e.input_ids) for e in disc_examples) / len(disc_examples),
        "packed_disc_s": time_per_document(packed_disc, disc_examples, args.device),
        "reference_disc_s": time_per_document(reference_disc, disc_examples, args.device),
        "ft_s": time_per_document(ft, lm_examples, args.device),
    }
    model.zero_grad(set_to_none=True)
    results["reference_over_packed"] = results["reference_disc_s"] / results["packed_disc_s"]
    results["disc_over_ft"] = results["packed_disc_s"] / results["ft_s"]
    return results


def _cuda_reference(model, teacher):
    import torch.nn.functional as F

    def run(batch):
        losses = []
        for example in batch:
            ids = example.input_ids
            per_split = []
            for start, end in example.split_spans:
                with torch.no_grad():
                    t = teacher(input_ids=torch.tensor([ids[:end]], device="cuda")).logits[0, start : end - 1].float()
                s = model(input_ids=torch.tensor([ids[start:end]], device="cuda")).logits[0, : end - start - 1].float()
                per_split.append(F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean") * 4)
            losses.append(torch.stack(per_split).mean())
        torch.stack(losses).mean().backward()

    return run


def _rss_high_water() -> int:
    """This process's peak RSS in bytes. Not ``ru_maxrss``: Linux carries that over ``exec`` from the parent,
    so a worker started by a parent holding two models would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def memory_worker(mode: str, tokens: int, device: str, dtype: str, chunk_size: int) -> None:
    """Runs in a subprocess: peak extra memory of one KL forward+backward over ``tokens`` rows."""
    import torch.nn.functional as F

    from disc_ray.objectives import chunked_linear_divergence

    from safetensors import safe_open

    from disc_ray.models import embedded_default_dir

    # only the (tied) output head is loaded, so the RSS high-water mark before the loss is low
    with safe_open(str(embedded_default_dir() / "model.safetensors"), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))
        weight = f.get_tensor(name).to(device=device, dtype=getattr(torch, dtype)).requires_grad_()
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(tokens, weight.shape[1], generator=gen, device=device, dtype=weight.dtype)
    teacher_hidden = (hidden + 0.1 * torch.randn(hidden.shape, generator=gen, device=device, dtype=weight.dtype)).detach()
    hidden.requires_grad_()
    targets = torch.randint(0, weight.shape[0], (tokens,), generator=gen, device=device)
    weights = torch.full((tokens,), 1.0 / tokens, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_high_water()
    if mode == "naive":
        student_logits = (hidden @ weight.t()).float()
        teacher_logits = (teacher_hidden @ weight.detach().t()).float()
        loss = F.kl_div(F.log_softmax(student_logits / 2, -1), F.log_softmax(teacher_logits / 2, -1), log_target=True, reduction="batchmean") * 4
    else:
        loss, _ = chunked_linear_divergence(hidden, weight, teacher_hidden, weight.detach(), targets, weights,
                                            kl_scale=1.0, temperature=2.0, chunk_size=chunk_size)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_high_water() - base
    print(json.dumps({"mode": mode, "peak_extra_bytes": peak, "loss": loss.item()}))


def bench_memory(args) -> dict:
    results = {}
    for mode in ("naive", "chunked"):
        cmd = [sys.executable, __file__, "--memory-worker", mode, "--tokens", str(args.tokens), "--device", args.device,
               "--dtype", args.dtype, "--chunk-size", str(args.chunk_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
    results["chunked_over_naive"] = results["chunked"]["peak_extra_bytes"] / results["naive"]["peak_extra_bytes"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--memory-worker", choices=["naive", "chunked"])
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.tokens, args.device, args.dtype, args.chunk_size)
        return
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}")
    timing = bench_time(args)
    print(f"documents={timing['documents']} tokens/doc={timing['tokens_per_document']:.0f} splits/doc={timing['splits_per_document']:.2f}")
    print(f"time per document (fwd+bwd): packed DiSC {timing['packed_disc_s']*1000:.0f} ms | per-split reference "
          f"{timing['reference_disc_s']*1000:.0f} ms | ft {timing['ft_s']*1000:.0f} ms")
    print(f"RATIO reference/packed DiSC = {timing['reference_over_packed']:.2f}x (target >= 2)")
    print(f"RATIO DiSC/ft time per document = {timing['disc_over_ft']:.2f}")
    memory = bench_memory(args)
    naive, chunked = memory["naive"]["peak_extra_bytes"], memory["chunked"]["peak_extra_bytes"]
    print(f"peak extra memory at {args.tokens} tokens, vocab 49152: naive {naive/2**20:.0f} MiB | chunked "
          f"(chunk {args.chunk_size}) {chunked/2**20:.0f} MiB | losses {memory['naive']['loss']:.5f} vs {memory['chunked']['loss']:.5f}")
    print(f"RATIO chunked/naive peak memory = {memory['chunked_over_naive']:.3f} (target <= 0.25)")


if __name__ == "__main__":
    main()
