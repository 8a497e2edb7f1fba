"""Packed attention without a dense mask: time and peak memory of one packed student row, measured in one run.

One packed row of ``--tokens`` tokens made of ``--split-tokens``-token splits (position ids restarting at 0
per split, as the DiSC student's row), forward + backward through the decoder, for:
  * ``sdpa``: transformers builds a dense block-diagonal ``[S, S]`` mask from the position ids;
  * ``disc_packed_sdpa`` (disc_ray/attention.py): causal SDPA on each split alone, no mask.
Each variant runs in its own subprocess; peak memory on CPU is the process's RSS high-water mark (VmHWM,
reset just before the step by writing 5 to ``/proc/self/clear_refs``) minus its RSS then (model, inputs and
one short warm-up step already resident); without the reset, the high-water mark left by building the model
(~90 MiB above the resident set) would hide the step's first ~90 MiB. The subprocesses run with
``MALLOC_MMAP_THRESHOLD_=65536``: every buffer of 64 KiB or more is its own mapping, returned to the system
when freed, so the figure is the peak of live tensor memory (as ``max_memory_allocated`` is on CUDA) rather
than what glibc's heap happens to keep (which moved it by +-20 MiB from run to run).
Rounds are interleaved and the medians printed with their ratios.

    python bench/bench_attention.py [--tokens 8192] [--split-tokens 300] [--layers 4] [--rounds 3] [--device cpu]
                                    [--scope model|attention]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("sdpa", "disc_packed_sdpa")


def vm_kib(key: str) -> int:
    """``VmHWM`` or ``VmRSS`` of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_vm_hwm() -> None:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        raise RuntimeError(f"cannot reset the RSS high-water mark (/proc/self/clear_refs): {error}") from error


def attention_only(model, position_ids, device) -> None:
    """Forward + backward of layer 0's attention function alone on random q/k/v of the row's length."""
    import torch
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config, layer = model.config, model.model.layers[0].self_attn
    n = position_ids.shape[-1]
    embeds = torch.zeros(1, n, config.hidden_size, device=device)
    mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None, past_key_values=None,
                              position_ids=position_ids)
    shape = (1, config.num_attention_heads, n, config.head_dim)
    kv_shape = (1, config.num_key_value_heads, n, config.head_dim)
    q = torch.randn(shape, device=device, requires_grad=True)
    k, v = (torch.randn(kv_shape, device=device, requires_grad=True) for _ in range(2))
    out, _ = ALL_ATTENTION_FUNCTIONS[config._attn_implementation](layer, q, k, v, mask, scaling=layer.scaling,
                                                                   position_ids=position_ids)
    # The upstream gradient a real model would send back (o_proj's backward): one tensor of the output's shape,
    # the standard way to time a layer's forward + backward (no loss temporaries on top of the attention's own).
    out.backward(torch.randn_like(out))


def run_one(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from disc_ray.attention import register_packed_attention
    from disc_ray.models import embedded_default_dir

    register_packed_attention()
    config = AutoConfig.from_pretrained(embedded_default_dir())  # SmolLM2-135M's shapes (Llama), random weights
    config.num_hidden_layers = args.layers
    config.max_position_embeddings = max(config.max_position_embeddings, args.tokens)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=args.variant).to(device)
    lengths = [args.split_tokens] * (args.tokens // args.split_tokens)
    if args.tokens % args.split_tokens:
        lengths.append(args.tokens % args.split_tokens)
    ids = torch.randint(0, config.vocab_size, (1, args.tokens), device=device)
    position_ids = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    no_logits = torch.zeros(0, dtype=torch.long, device=device)

    def step(n_tokens: int) -> None:
        if args.scope == "attention":  # one attention call as the model makes it (mask built as the model builds it)
            attention_only(model, position_ids[:, :n_tokens], device)
            return
        out = model(input_ids=ids[:, :n_tokens], position_ids=position_ids[:, :n_tokens], use_cache=False,
                    output_hidden_states=True, logits_to_keep=no_logits)
        out.hidden_states[-1].float().square().mean().backward()
        model.zero_grad(set_to_none=False)

    step(2 * args.split_tokens)  # warm-up: kernels, gradient buffers
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
    else:
        reset_vm_hwm()
        before = vm_kib("VmRSS") * 1024
    started = time.perf_counter()
    step(args.tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    after = torch.cuda.max_memory_allocated() if device.type == "cuda" else vm_kib("VmHWM") * 1024
    return {"variant": args.variant, "seconds": seconds, "peak_extra_mib": (after - before) / 2**20, "splits": len(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--split-tokens", type=int, default=300)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scope", choices=("model", "attention"), default="model",
                        help="model: the decoder's forward+backward; attention: one attention call alone")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_one(args)))
        return
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for round_index in range(args.rounds):
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens), "--split-tokens",
                       str(args.split_tokens), "--layers", str(args.layers), "--device", args.device, "--scope", args.scope]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: large buffers are unmapped when freed
            line = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO,
                                  env=env).stdout.strip().splitlines()[-1]
            results[variant].append(json.loads(line))
            print(f"round {round_index + 1}: {results[variant][-1]}", flush=True)
    median = {v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_extra_mib")} for v, rs in results.items()}
    dense, packed = median["sdpa"], median["disc_packed_sdpa"]
    print(f"\none packed row: {args.tokens} tokens, {results['sdpa'][0]['splits']} splits of <= {args.split_tokens}, "
          f"{args.layers} layers of SmolLM2-135M's shape, {args.scope} forward+backward on {args.device}, "
          f"medians of {args.rounds} rounds")
    for v in VARIANTS:
        print(f"  {v:18s} {median[v]['seconds']:8.2f} s  peak extra {median[v]['peak_extra_mib']:9.1f} MiB")
    print(f"  packed / dense: time {packed['seconds'] / dense['seconds']:.2f}x, "
          f"peak extra memory {packed['peak_extra_mib'] / dense['peak_extra_mib']:.3f}x")


if __name__ == "__main__":
    main()
