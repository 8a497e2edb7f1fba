"""Benchmark of the DiSC core (plain torch, no Ray), measured in one run.

Prints ratios, never asserts times:
  1. time per document (forward + backward): packed DiSC vs the per-split reference loop (2k passes),
     and DiSC vs ``ft``, at equal documents (BioASQ passages, k=5 sentence_boundary splits); on CUDA
     also tokens/s, achieved TFLOP/s and MFU, and the peak memory of a DiSC step vs an ``ft`` step;
  2. ``--check-dtype bfloat16``: the packed loss and gradients in bf16 against the per-split reference
     in fp32, next to the reference's own bf16 error (packing must not add error beyond bf16's);
  3. peak extra memory of the chunked KL vs the naive full-logits KL at 2048 scored tokens,
     each measured in its own subprocess (the process's own RSS high-water mark, VmHWM, on CPU;
     ``max_memory_allocated`` on GPU).

    python bench/bench_core.py [--documents 12] [--device cpu|cuda] [--dtype float32|bfloat16]
    # GPU machine without the sentence segmenter or the weights: prepare the documents here, time a random
    # model of a given architecture there (speed and memory do not depend on the weights' values)
    python bench/bench_core.py --write-examples .gpu/bioasq_examples.jsonl --documents 64
    python bench/bench_core.py --examples .gpu/bioasq_examples.jsonl --model .gpu/smollm2-1.7b-config \
        --device cuda --dtype bfloat16 --batch-documents 8 --check-dtype bfloat16
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from disc_ray.records import load_jsonl

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM datasheet, dense bf16: the MFU denominator


def load_passages(n: int) -> list[str]:
    rows = load_jsonl(BIOASQ)
    return [row["meta"]["context"] for row in rows[:n]]


def load_examples(args) -> list:
    """DocumentExamples with k=5 ``sentence_boundary`` splits: from ``--examples`` rows, else prepared here."""
    from disc_ray.splits import ROW_COLUMNS, SplitConfig, batch_to_examples, prepare_document

    if args.examples:
        rows = load_jsonl(args.examples)[: args.documents]
        return batch_to_examples({name: [row[name] for row in rows] for name in ROW_COLUMNS})
    from disc_ray.models import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    return [prepare_document(t, tokenizer, SplitConfig(num_splits=5))[0] for t in load_passages(args.documents)]


def config_only_dir(source: str) -> Path | None:
    """``source`` as a folder holding a ``config.json`` and no weights (the model is then built with random
    weights of that architecture), else None."""
    path = Path(source).expanduser()
    has_config = path.is_dir() and (path / "config.json").exists()
    return path if has_config and not any(path.glob("*.safetensors")) else None


def load_bench_model(source: str, dtype: str, device: str, seed: int = 0):
    """A model name / folder with weights, or a folder holding only ``config.json``: random weights of that
    architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from disc_ray.models import load_model_and_tokenizer

    path = config_only_dir(source)
    if path is not None:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa")
        return model.to(device), f"{path.name} (random weights)"
    model, _ = load_model_and_tokenizer(source, dtype=dtype, device=device)
    return model, source


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batches_of(examples: list, size: int) -> list[list]:
    return [examples[i : i + size] for i in range(0, len(examples) - size + 1, size)]


def time_per_document(step, batches, device, repeats=1) -> float:
    step(batches[0])  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            step(batch)
    synchronize(device)
    return (time.perf_counter() - started) / (sum(len(b) for b in batches) * repeats)


def peak_step_memory(step, batch, device) -> int:
    """Peak CUDA memory allocated during one step, above what was allocated before it (weights, grads)."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(batch)
    synchronize(device)
    return torch.cuda.max_memory_allocated() - base


def bench_time(args) -> dict:
    from disc_ray.loop import build_teacher
    from disc_ray.models import sdpa_without_cudnn
    from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch, pack_lm_batch
    from disc_ray.reference import reference_disc_loss

    torch.set_num_threads(args.threads) if args.threads else None
    model, model_name = load_bench_model(args.model, args.dtype, args.device)
    teacher = build_teacher(model)
    examples = load_examples(args)
    batches = batches_of(examples, args.batch_documents)
    disc_cfg, ft_cfg = ObjectiveConfig(name="disc"), ObjectiveConfig(name="ft")

    def packed_disc(batch):
        compute_loss(model, teacher, pack_disc_batch(batch).to(args.device), disc_cfg).loss.backward()

    def reference_disc(batch):  # under the same attention kernels as the packed step, for a fair ratio
        with sdpa_without_cudnn():
            reference_disc_loss(model, teacher, batch, temperature=2.0).backward()

    def ft(batch):
        compute_loss(model, teacher, pack_lm_batch(batch).to(args.device), ft_cfg).loss.backward()

    results = {
        "model": model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "documents": sum(len(b) for b in batches),
        "batch_documents": args.batch_documents,
        "splits_per_document": sum(len(e.split_spans) for e in examples) / len(examples),
        "tokens_per_document": sum(len(e.input_ids) for e in examples) / len(examples),
        "student_tokens_per_document": sum(e - s for e in examples for s, e in e.split_spans) / len(examples),
        "packed_disc_s": time_per_document(packed_disc, batches, args.device),
        "reference_disc_s": time_per_document(reference_disc, [b[:1] for b in batches][: args.reference_documents], args.device),
        "ft_s": time_per_document(ft, batches, args.device),
    }
    if args.device == "cuda":
        results["peak_step_bytes"] = {"disc": peak_step_memory(packed_disc, batches[0], args.device),
                                      "ft": peak_step_memory(ft, batches[0], args.device)}
    model.zero_grad(set_to_none=True)
    results["reference_over_packed"] = results["reference_disc_s"] / results["packed_disc_s"]
    results["disc_over_ft"] = results["packed_disc_s"] / results["ft_s"]
    # model FLOPs per document: 6N per trained token (student fwd+bwd), 2N per teacher token (fwd only)
    n = results["parameters"]
    results["disc_tflops"] = (6 * n * results["student_tokens_per_document"] + 2 * n * results["tokens_per_document"]) / results["packed_disc_s"] / 1e12
    results["ft_tflops"] = 6 * n * results["tokens_per_document"] / results["ft_s"] / 1e12
    return results


def check_dtype(args) -> dict:
    """Packed DiSC in ``args.check_dtype`` vs the per-split reference in fp32 (same weights, same documents)."""
    from disc_ray.loop import build_teacher
    from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch
    from disc_ray.reference import reference_disc_loss

    model32, _ = load_bench_model(args.model, "float32", args.device)
    examples = load_examples(args)[: args.check_documents]
    low = getattr(torch, args.check_dtype)

    def loss_and_grad(model, packed: bool):
        teacher = build_teacher(model)
        model.zero_grad(set_to_none=True)
        if packed:
            loss = compute_loss(model, teacher, pack_disc_batch(examples).to(args.device), ObjectiveConfig(name="disc")).loss
        else:
            loss = reference_disc_loss(model, teacher, examples, temperature=2.0)
        loss.backward()
        grad = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        del teacher
        return loss.item(), grad

    reference32 = loss_and_grad(model32, packed=False)
    packed32 = loss_and_grad(model32, packed=True)
    model_low = copy.deepcopy(model32).to(low)
    del model32
    packed_low = loss_and_grad(model_low, packed=True)
    reference_low = loss_and_grad(model_low, packed=False)

    def against_reference(result):
        loss, grad = result[0], result[1].double()
        ref = reference32[1].double()
        return {"loss": loss, "loss_rel_err": abs(loss - reference32[0]) / abs(reference32[0]),
                "grad_cosine": (grad @ ref / (grad.norm() * ref.norm())).item(),
                "grad_rel_err": ((grad - ref).norm() / ref.norm()).item()}

    return {"documents": len(examples), "dtype": args.check_dtype, "reference_fp32_loss": reference32[0],
            "packed_fp32": against_reference(packed32), f"packed_{args.check_dtype}": against_reference(packed_low),
            f"reference_{args.check_dtype}": against_reference(reference_low)}


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


def output_head(source: str, device: str, dtype: str) -> torch.Tensor:
    """Only the (tied) output head of ``source``, so the RSS high-water mark before the loss is low; a folder
    holding only ``config.json`` gives a random head of that shape."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from disc_ray.models import resolve_model_source

    path = config_only_dir(source)
    if path is not None:
        config = AutoConfig.from_pretrained(path)
        weight = torch.randn(config.vocab_size, config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
        return weight.to(device=device, dtype=getattr(torch, dtype)).requires_grad_()
    with safe_open(str(Path(resolve_model_source(source)) / "model.safetensors"), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))
        return f.get_tensor(name).to(device=device, dtype=getattr(torch, dtype)).requires_grad_()


def memory_worker(mode: str, tokens: int, device: str, dtype: str, chunk_size: int, model: str) -> None:
    """Runs in a subprocess: peak extra memory of one KL forward+backward over ``tokens`` rows."""
    import torch.nn.functional as F

    from disc_ray.objectives import chunked_linear_divergence

    weight = output_head(model, device, dtype)
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
               "--dtype", args.dtype, "--chunk-size", str(args.chunk_size), "--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
    results["chunked_over_naive"] = results["chunked"]["peak_extra_bytes"] / results["naive"]["peak_extra_bytes"]
    return results


def write_examples(args) -> None:
    from disc_ray.splits import example_to_row

    examples = load_examples(args)
    Path(args.write_examples).parent.mkdir(parents=True, exist_ok=True)
    Path(args.write_examples).write_text("".join(json.dumps(example_to_row(e)) + "\n" for e in examples))
    print(f"wrote {len(examples)} prepared documents to {args.write_examples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="model name / folder; a folder with only config.json: random weights of that architecture")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct", help="prepares the documents (without --examples)")
    parser.add_argument("--examples", help="JSONL of prepared documents (from --write-examples) instead of preparing here")
    parser.add_argument("--write-examples", metavar="FILE", help="prepare --documents BioASQ passages, write them, exit")
    parser.add_argument("--batch-documents", type=int, default=1, help="documents per packed step (timing)")
    parser.add_argument("--reference-documents", type=int, default=1_000_000, help="time the reference on at most N")
    parser.add_argument("--check-dtype", help="also compare packed DiSC in this dtype with the fp32 reference")
    parser.add_argument("--check-documents", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--memory-worker", choices=["naive", "chunked"])
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.tokens, args.device, args.dtype, args.chunk_size, args.model)
        return
    if args.write_examples:
        write_examples(args)
        return
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device={args.device} ({device_name}) dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}")
    figures = {"device": device_name, "dtype": args.dtype, "torch": torch.__version__}
    if args.check_dtype:
        check = figures["check"] = check_dtype(args)
        print(f"{check['dtype']} check on {check['documents']} documents, against the per-split reference in fp32 "
              f"(loss {check['reference_fp32_loss']:.5f}):")
        for name in ("packed_fp32", f"packed_{check['dtype']}", f"reference_{check['dtype']}"):
            r = check[name]
            print(f"  {name:<22} loss {r['loss']:.5f}  rel err {r['loss_rel_err']:.2e}  grad cosine {r['grad_cosine']:.6f}  "
                  f"grad rel err {r['grad_rel_err']:.2e}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    timing = figures["timing"] = bench_time(args)
    print(f"model={timing['model']} ({timing['parameters'] / 1e6:.0f}M parameters) documents={timing['documents']} "
          f"per step={timing['batch_documents']} tokens/doc={timing['tokens_per_document']:.0f} "
          f"splits/doc={timing['splits_per_document']:.2f} student tokens/doc={timing['student_tokens_per_document']:.0f}")
    print(f"time per document (fwd+bwd): packed DiSC {timing['packed_disc_s']*1000:.1f} ms | per-split reference "
          f"{timing['reference_disc_s']*1000:.1f} ms | ft {timing['ft_s']*1000:.1f} ms")
    print(f"RATIO reference/packed DiSC = {timing['reference_over_packed']:.2f}x (target >= 2)")
    print(f"RATIO DiSC/ft time per document = {timing['disc_over_ft']:.2f}")
    if args.device == "cuda":
        tokens_per_s = timing["tokens_per_document"] / timing["packed_disc_s"]
        print(f"DiSC: {tokens_per_s:,.0f} document tokens/s, {timing['disc_tflops']:.1f} TFLOP/s = "
              f"{100 * timing['disc_tflops'] / H100_BF16_DENSE_TFLOPS:.1f}% MFU | ft: {timing['ft_tflops']:.1f} TFLOP/s = "
              f"{100 * timing['ft_tflops'] / H100_BF16_DENSE_TFLOPS:.1f}% MFU (of {H100_BF16_DENSE_TFLOPS:.0f} dense bf16)")
        peak = timing["peak_step_bytes"]
        print(f"peak step memory above weights: DiSC {peak['disc'] / 2**20:.0f} MiB | ft {peak['ft'] / 2**20:.0f} MiB "
              f"(RATIO {peak['disc'] / peak['ft']:.2f})")
    memory = figures["memory"] = bench_memory(args)
    naive, chunked = memory["naive"]["peak_extra_bytes"], memory["chunked"]["peak_extra_bytes"]
    print(f"peak extra memory at {args.tokens} tokens: naive {naive/2**20:.0f} MiB | chunked "
          f"(chunk {args.chunk_size}) {chunked/2**20:.0f} MiB | losses {memory['naive']['loss']:.5f} vs {memory['chunked']['loss']:.5f}")
    print(f"RATIO chunked/naive peak memory = {memory['chunked_over_naive']:.3f} (target <= 0.25)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
