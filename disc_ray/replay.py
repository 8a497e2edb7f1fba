"""Replay (``objective.replay``, any objective): general chat examples mixed into the adaptation stream.

After every micro-batch of ``d`` documents a rank adds ``floor(r * (C + d)) - floor(r * C)`` replay examples
(``r`` = ``objective.replay_ratio``, ``C`` = documents the rank consumed before), taken in turn from the replay
pool (rank ``k`` of ``w`` takes pool items ``k, k + w, k + 2w, ...``, cycling). A replay example is trained with
cross-entropy on its response tokens (the chat-formatted prompt is context) plus, when
``objective.replay_kl_weight`` > 0, ``weight * KL(initial model || student)`` (T=1) on the same tokens; replay
examples count as documents (or their response tokens as tokens) in the step's normaliser, so the loss is the mean
over everything the step trained on.

Sources (``objective.replay``):

* a JSON Lines file of chat examples, one per line: ``{"messages": [{"role": "user", ...}, ..., {"role": "assistant",
  "content": "..."}]}`` (the last message is the response) or ``{"prompt": "...", "response": "..."}``;
* ``self``: the initial model's own responses to general prompts (``objective.replay_prompts``, a JSONL of
  ``{"prompt": ...}``, or the built-in :data:`REPLAY_PROMPTS`, which are NOT the drift suite's prompts, so drift stays
  a held-out measurement), generated once through the cached generation stage (:mod:`disc_ray.data.generation`, task
  ``respond``, ``objective.generation``'s settings), so it works offline.

Tokenization: the prompt through the model's chat template and the response after it, split the way the evaluation
layer splits (:func:`disc_ray.evaluation.prompts.encode_pair`), then the end-of-sequence token; cut to ``max_length``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REPLAY_PROMPTS = (
    "Give me three ideas for a healthy breakfast.",
    "How do I politely decline a meeting invitation? Write a short email.",
    "Explain what a hash table is in simple terms.",
    "Summarize the plot of a classic fairy tale in three sentences.",
    "What should I pack for a weekend hiking trip?",
    "Write a haiku about the ocean.",
    "What is the difference between weather and climate?",
    "Suggest a name for a small bakery and explain why.",
    "How can I improve my sleep habits?",
    "Translate 'Good morning, how are you?' into French and Spanish.",
    "Write a Python function that reverses a string.",
    "List four renewable sources of energy and one advantage of each.",
    "Explain why we have seasons on Earth.",
    "Give a short pep talk to someone starting a new job.",
    "What are the main parts of a plant cell?",
    "Write a two-sentence horror story.",
)


@dataclass
class ReplayExample:
    """A tokenized chat example: ``input_ids`` = chat-formatted prompt + response (+ end-of-sequence); the loss covers
    tokens ``response_start..len - 1``."""

    input_ids: list[int]
    response_start: int


def load_replay_records(path: str) -> list[tuple[list, str]]:
    """``(context messages, response)`` per line of a chat-examples JSONL; raises ValueError naming the line for a bad one."""
    from disc_ray.records import load_jsonl

    records = []
    for number, row in enumerate(load_jsonl(path), start=1):
        messages = row.get("messages") if isinstance(row, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant" \
                and isinstance(messages[-1].get("content"), str) and all(isinstance(m, dict) and "role" in m for m in messages):
            records.append((messages[:-1], messages[-1]["content"]))
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
            records.append(([{"role": "user", "content": row["prompt"]}], row["response"]))
        else:
            raise ValueError(f"objective.replay: {path} line {number}: expected {{\"messages\": [..., {{\"role\": \"assistant\", "
                             "\"content\": ...}]} or {\"prompt\": ..., \"response\": ...}")
    return records


def generate_replay_records(backend, prompts: list[str], settings, model_id: str, progress: bool = True) -> tuple[list, Counter]:
    """The initial model's responses to ``prompts`` through the cached generation stage (task ``respond``); empty ones are
    left out and counted (``replay_empty``)."""
    from disc_ray.data.generation import generate_for_documents

    generations = generate_for_documents(prompts, backend, "respond", settings, model_id, progress=progress)
    skipped = Counter(replay_empty=sum(g.empty for g in generations))
    records = [([{"role": "user", "content": p}], g.text) for p, g in zip(prompts, generations) if not g.empty]
    return records, +skipped


def tokenize_replay(records: list[tuple[list, str]], tokenizer, max_length: int) -> tuple[list[ReplayExample], Counter]:
    """Tokenized replay examples; one whose response does not start within ``max_length`` tokens is left out and counted
    (``replay_too_long``), a longer one is cut at ``max_length``."""
    from disc_ray.evaluation.prompts import encode_pair

    examples, skipped = [], Counter()
    for context, response in records:
        context_ids, response_ids = encode_pair(tokenizer, list(context), response)
        ids = (context_ids + response_ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))[:max_length]
        if len(ids) - len(context_ids) < 1 or not context_ids:
            skipped["replay_too_long"] += 1
            continue
        examples.append(ReplayExample(ids, len(context_ids)))
    return examples, skipped


def build_replay_pool(obj_cfg, tokenizer, max_length: int, *, model=None, model_source: str | None = None,
                      log=print) -> list[ReplayExample]:
    """The tokenized replay pool for ``obj_cfg.replay`` (a JSONL path or ``self``; ``self`` generates with ``model`` (in
    memory) or loads ``model_source`` in this process). Raises ValueError when nothing is left to replay."""
    if obj_cfg.replay == "self":
        from disc_ray.data.generation import load_generation_backend, model_identity, module_identity
        from disc_ray.evaluation.data import load_prompts

        prompts = load_prompts(obj_cfg.replay_prompts) if obj_cfg.replay_prompts else list(REPLAY_PROMPTS)
        if model is not None:
            import copy

            from disc_ray.evaluation.backends import HFBackend

            backend, model_id = HFBackend(copy.deepcopy(model), tokenizer, batch_size=1, progress=False), module_identity(model)
        else:
            backend, model_id = load_generation_backend(model_source, obj_cfg.generation), model_identity(model_source)
        records, skipped = generate_replay_records(backend, prompts, obj_cfg.generation, model_id)
        backend.close()
    else:
        records, skipped = load_replay_records(obj_cfg.replay), Counter()
    examples, too_long = tokenize_replay(records, tokenizer, max_length)
    skipped.update(too_long)
    log(f"[disc-ray] replay: {len(examples)} examples from {obj_cfg.replay}, ratio {obj_cfg.replay_ratio} per document, "
        f"kl weight {obj_cfg.replay_kl_weight}; skipped: {', '.join(f'{k}={v}' for k, v in sorted(skipped.items())) or 'none'}")
    if not examples:
        raise ValueError(f"objective.replay: no usable replay example in {obj_cfg.replay} (skipped: {dict(skipped)})")
    return examples


def replay_due(documents_before: int, documents: int, ratio: float) -> tuple[int, int]:
    """``(first, count)``: the replay examples a micro-batch of ``documents`` gets after ``documents_before`` (rank-local
    counts): items ``first .. first + count - 1`` of the rank's replay sequence."""
    first = int(ratio * documents_before)
    return first, int(ratio * (documents_before + documents)) - first


def take_replay(pool: list[ReplayExample], first: int, count: int, rank: int = 0, world_size: int = 1) -> list[ReplayExample]:
    """Items ``first .. first + count - 1`` of rank ``rank``'s sequence through ``pool`` (``rank, rank + w, ...``, cycling)."""
    return [pool[(rank + world_size * j) % len(pool)] for j in range(first, first + count)]


def pack_replay_batch(examples: list[ReplayExample], normalization: str = "document"):
    """Replay examples packed in one row (positions restarting per example); scored rows are the response tokens.
    Returns a :class:`disc_ray.objectives.PackedBatch` (teacher rows = student rows) or None for no examples."""
    from disc_ray.objectives import PackedBatch

    if not examples:
        return None
    ids, pos, rows, targets, weights = [], [], [], [], []
    for example in examples:
        offset, n = len(ids), len(example.input_ids)
        ids += example.input_ids
        pos += range(n)
        rows += range(offset + example.response_start - 1, offset + n - 1)
        targets += example.input_ids[example.response_start:]
        scored = n - example.response_start
        weights += [1.0 / scored if normalization == "document" else 1.0] * scored
    row = torch.tensor([ids], dtype=torch.long)
    positions = torch.tensor([pos], dtype=torch.long)
    scored_rows = torch.tensor(rows, dtype=torch.long)
    return PackedBatch(teacher_input_ids=row, teacher_position_ids=positions, teacher_positions=scored_rows, student_input_ids=row,
                       student_position_ids=positions, student_positions=scored_rows, target_ids=torch.tensor(targets, dtype=torch.long),
                       row_weights=torch.tensor(weights, dtype=torch.float32), num_documents=len(examples), num_target_tokens=len(targets))


def compute_replay_loss(student, teacher, replay, cfg) -> torch.Tensor:
    """Summed replay loss of a packed replay batch (:func:`pack_replay_batch`): ``sum_r w_r (CE_r + kl_weight * KL_r)``
    over response tokens, chunked (no ``[tokens, vocab]`` tensor); a 0-dim fp32 tensor with gradient, not normalised."""
    from disc_ray.objectives import chunked_linear_divergence, compute_teacher_hidden, last_hidden_states, output_head

    hidden = last_hidden_states(student, replay.student_input_ids, replay.student_position_ids).index_select(0, replay.student_positions)
    teacher_hidden = teacher_weight = None
    if cfg.replay_kl_weight > 0:
        teacher_hidden, teacher_weight = compute_teacher_hidden(teacher, replay), output_head(teacher).weight.detach()
    head = output_head(student)
    loss, _ = chunked_linear_divergence(hidden, head.weight, teacher_hidden, teacher_weight, replay.target_ids,
                                        replay.row_weights.to(hidden.device), ce_scale=1.0, kl_scale=cfg.replay_kl_weight,
                                        temperature=1.0, chunk_size=cfg.chunk_size, softcap=head.softcap, logit_scale=head.logit_scale)
    return loss


def reference_replay_loss(student, teacher, examples: list[ReplayExample], kl_weight: float = 0.0) -> torch.Tensor:
    """Per example, full logits: mean CE over the response tokens + ``kl_weight`` x mean KL(teacher || student); summed
    over examples (for checks)."""
    total = 0.0
    for example in examples:
        ids = torch.tensor([example.input_ids])
        logits = student(input_ids=ids).logits[0, example.response_start - 1 : -1]
        loss = F.cross_entropy(logits, ids[0, example.response_start:])
        if kl_weight:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids).logits[0, example.response_start - 1 : -1]
            loss = loss + kl_weight * F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher_logits, -1), log_target=True,
                                               reduction="batchmean")
        total = total + loss
    return total
