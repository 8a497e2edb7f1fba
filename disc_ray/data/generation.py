"""The generation stage: the initial model's own text for each document, before training (``rephrase``, ``cd_base``).

``rephrase`` trains on the model's rewrite of each document; ``cd_base`` on a continuation the model writes after it
(:data:`TASKS`). The text comes from the evaluation layer's engines (:mod:`disc_ray.evaluation.backends`: ``hf`` on
CPU or GPU, ``vllm`` on GPU), one document at a time, each with its own seed (``seed`` mixed with the document's
hash), so a document's text does not depend on its batch, its worker or the corpus order.

**Cache.** Every generation is stored on disk (``objective.generation.cache_dir``, one JSON file per entry) under
a key of (model identity, backend, prompt template, sampling settings ``max_new_tokens`` / ``temperature`` /
``top_p`` / ``seed``, document hash): a re-run, a resumed run or a sweep over training settings generates nothing
again; changing the model, template or any sampling setting misses the cache. The model identity is the hash of
its ``config.json`` and, per weight file, its name, size and first and last MiB (cheap for a 16 GB model, and
two random initialisations differ).

**Empty and truncated generations** are counted and reported, never silently trained on: an empty one (after
the same cleaning as the corpus) drops its document as a reject (reason ``generation_empty``, in the rejects file);
one that reached ``max_new_tokens`` (an end-of-sequence token exactly at the limit counts too) is kept and
counted (``on_truncated: keep``, the default: the paper cuts transfer text to a length anyway) or dropped as a
reject ``generation_truncated`` (``on_truncated: skip``).

In the Ray Data corpus pipeline the stage is a ``map_batches`` over actors (:class:`GenerateBlock`, one engine
each) between cleaning and tokenization; :func:`generate_for_documents` is the same work in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from disc_ray.data.config import GenerationCounts

REPHRASE_SYSTEM = "You are a helpful writing assistant."
REPHRASE_USER = ("Rewrite the following article in your own words. Keep every fact, name and number; do not add "
                 "anything.\n\nArticle:\n{document}")
TASKS = ("rephrase", "continue", "respond")
"""``rephrase``: chat prompt (system :data:`REPHRASE_SYSTEM`, user :data:`REPHRASE_USER`); ``continue``: the
document itself as a plain prompt (with the tokenizer's special prefix), the model writes what comes next;
``respond``: the "document" is a user message (self-generated replay, :mod:`disc_ray.replay`)."""
BACKENDS = ("hf", "vllm")
TRUNCATED_POLICIES = ("keep", "skip")
DEFAULT_CACHE_DIR = "~/.cache/disc-ray/generations"


@dataclass(frozen=True)
class GenerationSettings:
    """``objective.generation``: how ``rephrase`` / ``cd_base`` generate their training text (ignored by other objectives)."""

    backend: str = "hf"
    """``hf`` (transformers, CPU or GPU) or ``vllm`` (GPU; one engine per generation actor)."""
    max_new_tokens: int = 1024
    """Most tokens generated per document (the paper allows up to 10k; CPU cost grows with it)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass (1.0: off)."""
    seed: int = 0
    """Base seed; each document samples with ``seed`` mixed with its text's hash."""
    on_truncated: str = "keep"
    """What to do with a generation that reached ``max_new_tokens``: ``keep`` (counted) or ``skip`` (a reject)."""
    cache_dir: str = DEFAULT_CACHE_DIR
    """Where generations are cached (shared by runs and sweep trials; safe to delete)."""
    concurrency: int = 1
    """Generation actors in the Ray Data pipeline (each holds one copy of the model)."""
    num_cpus: float = 1.0
    """CPUs per generation actor (torch threads of the ``hf`` engine)."""
    num_gpus: float = 0.0
    """GPUs per generation actor (``vllm`` needs 1)."""
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"objective.generation.backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"objective.generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"objective.generation: temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.on_truncated not in TRUNCATED_POLICIES:
            raise ValueError(f"objective.generation.on_truncated must be one of {list(TRUNCATED_POLICIES)}, got {self.on_truncated!r}")
        if self.concurrency < 1:
            raise ValueError(f"objective.generation.concurrency must be >= 1, got {self.concurrency}")

    @property
    def sampling(self) -> dict:
        """What decides a document's text besides model, template and document (part of the cache key)."""
        return {"backend": self.backend, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}


# --------------------------------------------------------------------------- prompts, identities, cache


def build_prompt(task: str, document: str):
    """The prompt for one document: chat messages (``rephrase``) or the plain document (``continue``)."""
    if task == "rephrase":
        return [{"role": "system", "content": REPHRASE_SYSTEM}, {"role": "user", "content": REPHRASE_USER.format(document=document)}]
    if task == "continue":
        return document
    if task == "respond":
        return [{"role": "user", "content": document}]
    raise ValueError(f"unknown generation task {task!r}; choose from {list(TASKS)}")


def template_identity(task: str) -> str:
    """What the prompt is made of (part of the cache key): a changed template never hits old entries."""
    return json.dumps(build_prompt(task, "{document}"), sort_keys=True)


def model_identity(source: str) -> str:
    """sha256 of a model directory's ``config.json`` and, per ``*.safetensors`` file, its name, size and first and last
    MiB (a path that is not a directory: the path itself)."""
    path = Path(source)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(str(source).encode())
        return digest.hexdigest()
    config = path / "config.json"
    digest.update(config.read_bytes() if config.exists() else b"")
    for weights in sorted(path.glob("*.safetensors")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()


def module_identity(model) -> str:
    """sha256 of an in-memory model's config and, per parameter, its name, shape and first 4 KiB (the in-process path's
    :func:`model_identity`)."""
    import torch

    digest = hashlib.sha256(model.config.to_json_string().encode())
    for name, parameter in model.state_dict().items():
        data = parameter.detach().reshape(-1)[:1024].to("cpu", torch.float32).numpy().tobytes()
        digest.update(f"{name}:{tuple(parameter.shape)}".encode() + data)
    return digest.hexdigest()


def document_seed(seed: int, document: str) -> int:
    """The sampling seed of one document: ``seed`` mixed with the document's sha256 (31 bits)."""
    return int(hashlib.sha256(f"{seed}\0{document}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def cache_key(model_id: str, task: str, settings: GenerationSettings, document: str) -> str:
    """sha256 of (model identity, prompt template, sampling settings, document sha256)."""
    parts = {"model": model_id, "template": template_identity(task), "sampling": settings.sampling,
             "document": hashlib.sha256(document.encode()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class GenerationCache:
    """One JSON file per entry, ``<dir>/<key[:2]>/<key>.json``, written atomically (safe with concurrent actors)."""

    def __init__(self, directory: str):
        self.directory = Path(directory).expanduser()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged entry is generated again
            return None

    def put(self, key: str, entry: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(tmp, path)


# --------------------------------------------------------------------------- generating


@dataclass
class Generation:
    """One document's generated text (cleaned as the corpus is) and how it ended."""

    text: str
    generated_tokens: int
    """Tokens the engine produced, an end-of-sequence token included."""
    truncated: bool
    """It reached ``max_new_tokens``."""
    cached: bool = False

    @property
    def empty(self) -> bool:
        return not self.text.strip()


def load_generation_backend(model_source: str, settings: GenerationSettings):
    """The evaluation layer's engine ``settings.backend`` names, loaded from ``model_source`` (progress bars off: the
    stage shows its own)."""
    from disc_ray.evaluation.backends import build_backend
    from disc_ray.evaluation.config import EvalConfig

    return build_backend(model_source, EvalConfig(backend=settings.backend, device=settings.device, dtype=settings.dtype,
                                                  batch_size=1, progress=False, seed=settings.seed))


def generate_for_documents(documents: list[str], backend, task: str, settings: GenerationSettings, model_id: str, *,
                           clean=None, progress: bool = True, counts: GenerationCounts | None = None) -> list[Generation]:
    """Each document's :class:`Generation`, from the cache or generated now (and cached). ``clean``: the corpus's
    cleaning (``text -> text``) applied to the generated text; ``counts`` is updated in place when given.

    Truncation is read from the engine's generated-token count (``backend.stats.generated_tokens``, one document
    per call), so it is exact whatever the tokenizer does on decoding."""
    import time

    from tqdm.auto import tqdm

    cache = GenerationCache(settings.cache_dir)
    counts = counts if counts is not None else GenerationCounts()
    results = []
    started = time.perf_counter()
    for document in tqdm(documents, desc=f"[disc-ray] generating ({task})", disable=not progress, leave=False, dynamic_ncols=True):
        key = cache_key(model_id, task, settings, document)
        entry = cache.get(key)
        if entry is not None:
            generation = Generation(entry["text"], entry["generated_tokens"], entry["truncated"], cached=True)
        else:
            before = backend.stats.generated_tokens
            (texts,) = backend.generate([build_prompt(task, document)], n=1, temperature=settings.temperature,
                                        max_new_tokens=settings.max_new_tokens, seed=document_seed(settings.seed, document),
                                        top_p=settings.top_p)
            produced = backend.stats.generated_tokens - before
            text = clean(texts[0]) if clean else texts[0]
            generation = Generation(text, produced, produced >= settings.max_new_tokens)
            cache.put(key, {"text": generation.text, "generated_tokens": produced, "truncated": generation.truncated, "task": task,
                            "sampling": settings.sampling})
        counts.add(generation)
        results.append(generation)
    counts.seconds = (counts.seconds or 0.0) + time.perf_counter() - started
    return results


# --------------------------------------------------------------------------- the Ray Data stage

GENERATION_COLUMNS = ("continuation", "generation_cached", "generation_truncated")


@dataclass(frozen=True)
class GenerationPlan:
    """What the corpus pipeline needs to run the stage: the task, settings and the model (resolved directory)."""

    task: str
    settings: GenerationSettings
    model_source: str
    max_transfer_tokens: int = 1000
    model_id: str = field(default="")

    def fingerprint(self) -> dict:
        """What the generated rows depend on (for the processed-rows fingerprint)."""
        return {"task": self.task, "template": template_identity(self.task), "sampling": self.settings.sampling,
                "model": self.model_id or model_identity(self.model_source), "on_truncated": self.settings.on_truncated,
                "max_transfer_tokens": self.max_transfer_tokens if self.task == "continue" else None}


class GenerateBlock:
    """Ray Data actor UDF: cleaned block -> the same block with each readable document's generation.

    ``rephrase``: ``text`` becomes the rewrite; ``continue``: the document stays in ``text`` and the continuation goes
    to ``continuation``. Adds ``generation_cached`` / ``generation_truncated`` (bool, null for a row that was not
    generated: a reject before this stage); an empty generation (or a
    truncated one under ``on_truncated: skip``) turns its row into a reject (``generation_empty`` /
    ``generation_truncated``) that the pipeline writes to the rejects file."""

    def __init__(self, plan: GenerationPlan, cleaning: dict):
        self.plan = plan
        self.cleaning = cleaning
        self.model_id = plan.model_id or model_identity(plan.model_source)
        self.backend = load_generation_backend(plan.model_source, plan.settings)

    def _clean(self, text: str) -> str:
        from disc_ray.data.cleaning import clean_text

        return clean_text(text, **self.cleaning)[0]

    def __call__(self, block):
        import pyarrow as pa

        from disc_ray.data.readers import _preview

        c = block.to_pydict()
        n = len(c["text"])
        todo = [i for i in range(n) if not c["reason"][i]]
        generations = dict(zip(todo, generate_for_documents([c["text"][i] for i in todo], self.backend, self.plan.task,
                                                            self.plan.settings, self.model_id, clean=self._clean)))
        continuation, cached, truncated = [None] * n, [None] * n, [None] * n  # None: not generated (a reject before)
        for i, generation in generations.items():
            cached[i], truncated[i] = generation.cached, generation.truncated
            reason = ("generation_empty" if generation.empty else
                      "generation_truncated" if generation.truncated and self.plan.settings.on_truncated == "skip" else "")
            if reason:
                c["reason"][i], c["preview"][i] = reason, _preview(c["text"][i])
                c["detail"][i] = f"{self.plan.task} generation {'is empty' if generation.empty else 'reached max_new_tokens'} " \
                                 f"({generation.generated_tokens} tokens)"
                c["text"][i] = None
            elif self.plan.task == "rephrase":
                c["text"][i] = generation.text
            else:
                continuation[i] = generation.text
        c.update(generation_cached=cached, generation_truncated=truncated)
        schema = block.schema.append(pa.field("generation_cached", pa.bool_())).append(pa.field("generation_truncated", pa.bool_()))
        if self.plan.task == "continue":  # its presence makes the prepare stage build transfer rows
            c["continuation"] = continuation
            schema = schema.append(pa.field("continuation", pa.string()))
        return pa.Table.from_pydict(c, schema=schema)
