"""Evaluation throughput of the ``hf`` backend on the embedded default (SmolLM2-135M-Instruct).

Greedy generation on the same IFEval prompts (a seeded subset) at batch size 1 and 8: prompts/s and
generated tokens/s, and the batched/unbatched ratio; plus option log-likelihood scoring of BioASQ MCQ
(pairs/s). Where vLLM and a GPU are available, the same prompts through ``vllm`` vs ``hf`` (both on the
GPU) as a ratio; otherwise that part prints that it was skipped. Prints numbers, never asserts times.

    python bench/bench_eval.py [--prompts 16] [--max-new-tokens 64] [--batch-sizes 1,8] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
IFEVAL = REPO / ".." / "shared" / "data" / "ifeval" / "input_data.jsonl"
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
MODEL = "smollm2-135m-instruct"


def ifeval_prompts(count: int, seed: int) -> list:
    from disc_ray.evaluation.data import load_ifeval, seeded_subset

    return [[{"role": "user", "content": item.prompt}] for item in seeded_subset(load_ifeval(IFEVAL), count, seed)]


def time_generation(backend, prompts, max_new_tokens: int) -> dict:
    from disc_ray.evaluation.backends import GenerationStats

    backend.generate(prompts[:1], max_new_tokens=4)  # warm-up
    backend.stats = GenerationStats()
    started = time.perf_counter()
    completions = backend.generate(prompts, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - started
    tokens = backend.stats.generated_tokens
    return dict(seconds=seconds, prompts_per_s=len(prompts) / seconds, tokens_per_s=tokens / seconds, generated_tokens=tokens,
                completions=[c[0] for c in completions])


def time_loglikelihood(backend, questions: int, seed: int) -> dict:
    from disc_ray.evaluation.data import load_mcq, seeded_subset
    from disc_ray.evaluation.prompts import mcq_loglikelihood_context

    items = seeded_subset(load_mcq(BIOASQ), questions, seed)
    pairs = [(mcq_loglikelihood_context(i), o) for i in items for o in i.options]
    backend.loglikelihood(pairs[:2])
    started = time.perf_counter()
    backend.loglikelihood(pairs)
    seconds = time.perf_counter() - started
    return dict(pairs=len(pairs), seconds=seconds, pairs_per_s=len(pairs) / seconds)


def bench_vllm(prompts, max_new_tokens: int, hf_tokens_per_s: float, hf_completions: list) -> dict | None:
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        print(f"[bench] vLLM comparison skipped: vLLM is not installed here ({err})")
        return None
    if not torch.cuda.is_available():
        print("[bench] vLLM comparison skipped: no CUDA GPU")
        return None
    from disc_ray.evaluation.backends import VLLMBackend

    backend = VLLMBackend(MODEL, dtype="float32", progress=False)
    result = time_generation(backend, prompts, max_new_tokens)
    same = sum(a == b for a, b in zip(result["completions"], hf_completions))
    result.update(ratio_vs_hf=result["tokens_per_s"] / hf_tokens_per_s, identical_completions=f"{same}/{len(prompts)}")
    backend.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--mcq-questions", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from disc_ray.evaluation.backends import HFBackend

    prompts = ifeval_prompts(args.prompts, args.seed)
    backend = HFBackend.load(MODEL, device=args.device, dtype=args.dtype, progress=False)
    load_before = os.getloadavg()[0]
    results = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        backend.batch_size = batch_size
        results[batch_size] = time_generation(backend, prompts, args.max_new_tokens)
    backend.batch_size = 8
    mcq = time_loglikelihood(backend, args.mcq_questions, args.seed)
    sizes = sorted(results)
    first = results[sizes[0]]
    greedy_same = all(results[b]["completions"] == first["completions"] for b in sizes)
    print(f"hf backend, {MODEL}, device={args.device}, dtype={args.dtype}, torch threads={torch.get_num_threads()}, "
          f"{len(prompts)} IFEval prompts, greedy, max_new_tokens={args.max_new_tokens}, "
          f"load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}")
    print("| batch size | seconds | prompts/s | generated tokens/s | generated tokens |")
    print("|---|---|---|---|---|")
    for b in sizes:
        r = results[b]
        print(f"| {b} | {r['seconds']:.1f} | {r['prompts_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['generated_tokens']} |")
    if len(sizes) > 1:
        last = results[sizes[-1]]
        print(f"batched/unbatched (batch {sizes[-1]} vs {sizes[0]}): {last['tokens_per_s'] / first['tokens_per_s']:.2f}x tokens/s; "
              f"greedy completions identical across batch sizes: {greedy_same}")
    print(f"MCQ option log-likelihood: {mcq['pairs']} (question, option) pairs in {mcq['seconds']:.1f} s = {mcq['pairs_per_s']:.1f} pairs/s")
    vllm_result = bench_vllm(prompts, args.max_new_tokens, results[sizes[-1]]["tokens_per_s"], results[sizes[-1]]["completions"])
    if vllm_result:
        print(f"vLLM: {vllm_result['tokens_per_s']:.1f} tokens/s = {vllm_result['ratio_vs_hf']:.1f}x hf (batch {sizes[-1]}); "
              f"identical greedy completions {vllm_result['identical_completions']}")
    summary = {str(b): {k: v for k, v in r.items() if k != "completions"} for b, r in results.items()}
    print(json.dumps({"hf": summary, "mcq_loglikelihood": mcq, "vllm": {k: v for k, v in (vllm_result or {}).items() if k != "completions"}}))


if __name__ == "__main__":
    main()
