"""Per-worker peak host memory of the training set-up: memory-lean loading vs the full-copy path.

A random-weight model of SmolLM2-360M's shape with more layers (``--layers``, default 40: ~440M parameters,
1.76 GB in fp32) is saved once as an fp32 safetensors folder. For each variant, ``--ranks`` gloo processes
(``torch.multiprocessing``, no Ray: the same function a Ray Train worker calls,
:func:`disc_ray.loading.build_sharded_models`) build the sharded student and teacher while a thread samples
``/proc/self/status`` every 5 ms:

  * ``full_copy``: every rank loads the whole fp32 model, deep-copies it as the teacher, then shards both;
  * ``lean``: meta device -> FSDP2 shards -> each rank reads its slices (fp32 teacher);
  * ``lean_bf16``: the same with ``model.teacher_dtype=bfloat16``.

Printed per rank: peak RSS during set-up minus the RSS just before it (torch, transformers' Llama modelling and
tokenizer code, accelerate and the process group already imported: code, not weights), as a ratio to one fp32 copy of the model; also the peak of anonymous memory alone
(``RssAnon``: file pages of the mmapped safetensors are page cache the kernel can drop).

    python bench/bench_loading.py [--layers 40] [--hidden-size 960] [--intermediate-size 2560] [--ranks 2]
                                  [--folder /tmp/disc-ray-bench-loading] [--variants full_copy,lean,lean_bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from pathlib import Path

VARIANTS = {"full_copy": (False, "float32"), "lean": (True, "float32"), "lean_bf16": (True, "bfloat16")}


def memory_kib() -> dict[str, int]:
    """``VmRSS`` and ``RssAnon`` of this process, KiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(line.split()[1])
    return values


class PeakSampler(threading.Thread):
    """Samples :func:`memory_kib` every ``interval_s`` until stopped; keeps the peaks."""

    def __init__(self, interval_s: float = 0.005):
        super().__init__(daemon=True)
        self.interval_s, self.peak, self.done = interval_s, memory_kib(), threading.Event()

    def run(self):
        while not self.done.is_set():
            for key, value in memory_kib().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval_s)

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        return self.peak


def build_model_folder(folder: Path, layers: int, hidden_size: int = 960, intermediate_size: int = 2560) -> int:
    """A random fp32 model of SmolLM2-360M's shape (64-wide heads, 3 query heads per KV head) with ``layers`` layers
    of ``hidden_size`` / ``intermediate_size``, and the embedded tokenizer; returns its parameter count. Reused when
    already there."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from disc_ray.models import load_tokenizer

    heads = hidden_size // 64
    if heads * 64 != hidden_size or heads % 3:
        raise ValueError(f"--hidden-size must be a multiple of 192 (64-wide heads, 3 per KV head), got {hidden_size}")
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 3,
                         max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(folder)
        load_tokenizer("smollm2-135m-instruct").save_pretrained(folder)
        del model
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def measure_rank(rank: int, world_size: int, port: int, folder: str, lean: bool, teacher_dtype: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from disc_ray.loading import build_sharded_models

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    # The code the set-up runs is imported before the baseline (~130 MiB of modules, whatever the model's size):
    # the figure is what the set-up allocates for weights and their bookkeeping.
    import accelerate  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import disc_ray.attention  # noqa: F401
    import disc_ray.loop  # noqa: F401
    import disc_ray.models  # noqa: F401

    dist.barrier()
    before = memory_kib()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    models = build_sharded_models(folder, needs_teacher=True, teacher_dtype=getattr(torch, teacher_dtype),
                                  device=torch.device("cpu"), mixed_precision=False, lean=lean,
                                  with_tokenizer=rank == 0)  # as a Ray Train worker: only rank 0 exports
    seconds = time.perf_counter() - started
    peak, after = sampler.stop(), memory_kib()
    assert models.loading == ("lean" if lean else "full_copy"), models.fallback_reason
    Path(f"{out}.{rank}").write_text(json.dumps({"before": before, "peak": peak, "after": after, "seconds": seconds}))
    dist.barrier()
    dist.destroy_process_group()


def run_variant(folder: Path, ranks: int, lean: bool, teacher_dtype: str, out: Path) -> list[dict]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(measure_rank, args=(ranks, port, str(folder), lean, teacher_dtype, str(out)), nprocs=ranks,
                       join=True, start_method="spawn")
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--hidden-size", type=int, default=960)
    parser.add_argument("--intermediate-size", type=int, default=2560)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--folder", default="/tmp/disc-ray-bench-loading")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    width = "" if (args.hidden_size, args.intermediate_size) == (960, 2560) else f"-{args.hidden_size}h{args.intermediate_size}i"
    folder = Path(args.folder) / f"llama-{args.layers}l{width}"
    parameters = build_model_folder(folder, args.layers, args.hidden_size, args.intermediate_size)
    fp32_kib = parameters * 4 / 1024
    print(f"model: {parameters / 1e6:.0f}M parameters, {fp32_kib / 1024 ** 2:.2f} GiB in fp32; {args.ranks} gloo ranks")
    for name in args.variants.split(","):
        lean, teacher_dtype = VARIANTS[name]
        results = run_variant(folder, args.ranks, lean, teacher_dtype, Path(args.folder) / f"result-{name}")
        for rank, r in enumerate(results):
            rss = (r["peak"]["VmRSS"] - r["before"]["VmRSS"]) / fp32_kib
            anon = (r["peak"]["RssAnon"] - r["before"]["RssAnon"]) / fp32_kib
            kept = (r["after"]["RssAnon"] - r["before"]["RssAnon"]) / fp32_kib
            print(f"{name:10s} rank {rank}: peak RSS {rss:.2f}x fp32 model | peak anon {anon:.2f}x | anon held after "
                  f"set-up {kept:.2f}x | {r['seconds']:.1f} s (RSS before set-up {r['before']['VmRSS'] / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
