"""Training objectives: DiSC (packed, chunked) and the ``ft`` / ``ft_kl`` / ``talr`` / ``lora`` / ``rephrase`` / ``cd_base``
baselines. Plain torch, no Ray.

``talr`` (token-adaptive loss reweighting) lives in :mod:`disc_ray.talr`; ``lora`` is ``ft``'s cross-entropy
through PEFT LoRA adapters (:mod:`disc_ray.lora` wraps the student; the loss here is ``ft``'s). ``rephrase`` is
``ft``'s cross-entropy on the initial model's rewrite of each document, and ``cd_base`` DiSC's packed KL on rows
whose one split is a generated continuation and whose teacher prefix is the whole document; both get their text from
the generation stage (:mod:`disc_ray.data.generation`), so the losses here are ``ft``'s and ``disc``'s.

DiSC for one split ``[s, e)`` of a document ``x``: the frozen teacher reads ``x[:e]``, the student
reads ``x[s:e]`` alone, and the loss is ``T^2 * KL(teacher/T || student/T)`` on the split's tokens
2..L. Two facts make it cheap:

* every split is a span of the same document, so ONE teacher forward over the document gives the
  teacher's distributions for all its splits (teacher position ``s+j`` predicts token ``s+j+1``);
* all splits of all documents in a batch are packed into ONE student row, with ``position_ids``
  restarting at 0 per split (transformers turns that into a block-diagonal causal mask).

Only the hidden states of the positions that are scored are kept; the vocabulary projection,
softmax and KL run in row chunks inside :class:`ChunkedLinearDivergence`, which also computes the
gradients chunk by chunk, so no ``[tokens, vocab]`` tensor for the whole batch ever exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from disc_ray.data.generation import GenerationSettings
from disc_ray.model_check import OutputHead, output_head, packed_attention_kwargs
from disc_ray.models import sdpa_without_cudnn
from disc_ray.splits import DocumentExample

OBJECTIVES = ("disc", "ft", "ft_kl", "talr", "lora", "rephrase", "cd_base")
GENERATION_TASKS = {"rephrase": "rephrase", "cd_base": "continue"}
"""The objectives that train on generated text, and what they generate (:data:`disc_ray.data.generation.TASKS`)."""
NORMALIZATIONS = ("document", "token")
TEACHER_OBJECTIVES = ("disc", "ft_kl", "cd_base")  # a KL to the initial model on the documents' tokens


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which loss to train and its knobs (paper defaults)."""

    name: str = "disc"
    """``disc`` (default), ``ft`` (next-token cross-entropy), ``ft_kl`` (CE + beta * KL to the initial model),
    ``talr`` (CE with token-adaptive weights, :mod:`disc_ray.talr`), ``lora`` (CE through LoRA adapters on a
    frozen base, merged into the export: :mod:`disc_ray.lora`), ``rephrase`` (CE on the initial model's rewrite of each
    document) or ``cd_base`` (KL to the initial model on a continuation it wrote, the teacher reading the document first)."""
    temperature: float = 2.0
    """DiSC softmax temperature T; the KL is multiplied by T^2."""
    ft_kl_beta: float = 0.1
    ft_kl_temperature: float = 1.0
    normalization: str = "document"
    """``document``: mean over a split's tokens, then over the document's splits, then over documents
    (the paper's); ``token``: every scored token weighs the same."""
    chunk_size: int = 256
    """Rows of the vocabulary projection computed at once; peak memory ~ 3-4 x chunk_size x vocab x 4 bytes."""
    lora_rank: int = 16
    """``lora`` only: adapter rank r (the paper's released code: 16)."""
    lora_alpha: float = 32.0
    """``lora`` only: scaling alpha; the adapter's update is ``alpha / r * B @ A`` (released code: 32)."""
    lora_dropout: float = 0.1
    """``lora`` only: dropout on the adapters' input while training (released code: 0.1)."""
    lora_target_modules: str = "all-linear"
    """``lora`` only: PEFT ``target_modules``: ``all-linear`` (every linear layer but the output head, as the released
    code) or a comma-separated list of module names (``q_proj,v_proj``)."""
    cd_base_temperature: float = 1.0
    """``cd_base`` only: softmax temperature T of its KL (times T^2), 1.0 as the paper's baseline."""
    max_transfer_tokens: int = 1000
    """``cd_base`` only: the continuation is cut to its first this many tokens (the paper: 1000)."""
    generation: GenerationSettings = dataclasses.field(default_factory=GenerationSettings)
    """``rephrase`` / ``cd_base`` only: engine, sampling, cache (:class:`disc_ray.data.generation.GenerationSettings`)."""
    replay: str = ""
    """Replay for any objective (:mod:`disc_ray.replay`): a JSONL of chat examples, ``self`` (the initial model's
    responses to general prompts, generated once and cached) or empty (off)."""
    replay_ratio: float = 0.25
    """Replay examples mixed in per adaptation document."""
    replay_kl_weight: float = 0.0
    """Weight of KL(initial model || student) (T=1) added to the replay examples' CE (replay examples only)."""
    replay_prompts: str | None = None
    """``replay: self`` only: a JSONL of ``{"prompt": ...}`` (default: :data:`disc_ray.replay.REPLAY_PROMPTS`)."""

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective.name: unknown objective {self.name!r}; choose from {list(OBJECTIVES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"objective.normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}")
        if self.temperature <= 0 or self.ft_kl_temperature <= 0:
            raise ValueError("objective temperatures must be > 0")
        if self.ft_kl_beta < 0:
            raise ValueError(f"objective.ft_kl_beta must be >= 0, got {self.ft_kl_beta}")
        if self.chunk_size < 1:
            raise ValueError(f"objective.chunk_size must be >= 1, got {self.chunk_size}")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ValueError(f"objective.lora_rank must be >= 1 and objective.lora_alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"objective.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules.strip():
            raise ValueError("objective.lora_target_modules must not be empty")
        if self.cd_base_temperature <= 0 or self.max_transfer_tokens < 2:
            raise ValueError(f"objective.cd_base_temperature must be > 0 and objective.max_transfer_tokens >= 2, got "
                             f"{self.cd_base_temperature}, {self.max_transfer_tokens}")
        if self.replay_ratio <= 0 or self.replay_kl_weight < 0:
            raise ValueError(f"objective.replay_ratio must be > 0 and objective.replay_kl_weight >= 0, got {self.replay_ratio}, "
                             f"{self.replay_kl_weight}")

    @property
    def needs_teacher(self) -> bool:
        return self.name in TEACHER_OBJECTIVES or bool(self.replay and self.replay_kl_weight > 0)

    @property
    def packs_splits(self) -> bool:
        """Rows carry splits the student reads alone (``disc``; ``cd_base``: the continuation): DiSC's packing."""
        return self.name in ("disc", "cd_base")

    @property
    def generation_task(self) -> str | None:
        """What the generation stage writes for this objective (None: no generation)."""
        return GENERATION_TASKS.get(self.name)


# --------------------------------------------------------------------------- packing


@dataclass
class PackedBatch:
    """Token ids and positions for one step, packed one row per model (batch dimension 1).

    ``teacher_positions[r]`` and ``student_positions[r]`` are the positions (in the packed rows) whose
    next-token distributions are compared for scored row ``r``; ``target_ids[r]`` is the token they
    predict; ``row_weights[r]`` makes ``sum(row_weights * per_row_loss)`` the sum of per-document losses
    (``document`` normalization) or of per-token losses (``token``).
    """

    teacher_input_ids: torch.Tensor  # [1, T] long
    teacher_position_ids: torch.Tensor  # [1, T] long, restarting at 0 per document
    teacher_positions: torch.Tensor  # [N] long
    student_input_ids: torch.Tensor  # [1, S] long
    student_position_ids: torch.Tensor  # [1, S] long, restarting at 0 per split (disc) / document (ft)
    student_positions: torch.Tensor  # [N] long
    target_ids: torch.Tensor  # [N] long
    row_weights: torch.Tensor  # [N] float32
    num_documents: int
    num_target_tokens: int
    row_documents: torch.Tensor | None = None  # [N] long: each scored row's document index in the batch (0..D-1)
    replay: "PackedBatch | None" = None  # replay examples trained with this batch (disc_ray/replay.py)

    @property
    def num_units(self) -> tuple[int, int]:
        """``(documents, scored tokens)`` the step's normaliser counts: this batch's plus its replay examples'."""
        extra = (self.replay.num_documents, self.replay.num_target_tokens) if self.replay is not None else (0, 0)
        return self.num_documents + extra[0], self.num_target_tokens + extra[1]

    def to(self, device) -> "PackedBatch":
        moved = {k: (v.to(device) if torch.is_tensor(v) or isinstance(v, PackedBatch) else v) for k, v in self.__dict__.items()}
        return PackedBatch(**moved)


def _as_tensors(**lists) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.long).unsqueeze(0) if k.endswith("_ids") else torch.tensor(v, dtype=torch.long) for k, v in lists.items()}


def pack_disc_batch(examples: list[DocumentExample], normalization: str = "document") -> PackedBatch:
    """Pack documents for the teacher and their splits for the student (see module docstring)."""
    teacher_ids, teacher_pos, student_ids, student_pos = [], [], [], []
    teacher_rows, student_rows, targets, weights, documents = [], [], [], [], []
    for index, example in enumerate(examples):
        if not example.split_spans:
            raise ValueError("pack_disc_batch: an example has no split spans (prepare it with with_splits=True)")
        doc_offset = len(teacher_ids)
        teacher_ids += example.input_ids
        teacher_pos += range(len(example.input_ids))
        special = example.input_ids[: example.num_special_prefix]
        for start, end in example.split_spans:
            row_offset = len(student_ids) + len(special)
            student_ids += special + example.input_ids[start:end]
            student_pos += range(len(special) + end - start)
            scored = end - start - 1  # tokens 2..L of the split
            teacher_rows += range(doc_offset + start, doc_offset + end - 1)
            student_rows += range(row_offset, row_offset + scored)
            targets += example.input_ids[start + 1 : end]
            weight = 1.0 / (scored * len(example.split_spans)) if normalization == "document" else 1.0
            weights += [weight] * scored
            documents += [index] * scored
    tensors = _as_tensors(
        teacher_input_ids=teacher_ids, teacher_position_ids=teacher_pos, teacher_positions=teacher_rows,
        student_input_ids=student_ids, student_position_ids=student_pos, student_positions=student_rows,
        target_ids=targets,
    )
    tensors["target_ids"] = tensors["target_ids"].squeeze(0)
    return PackedBatch(**tensors, row_weights=torch.tensor(weights, dtype=torch.float32),
                       num_documents=len(examples), num_target_tokens=len(targets),
                       row_documents=torch.tensor(documents, dtype=torch.long))


def pack_lm_batch(examples: list[DocumentExample], normalization: str = "document") -> PackedBatch:
    """Pack whole documents for next-token prediction (``ft``, ``ft_kl``, ``talr``, ``lora``, ``rephrase``); teacher and
    student rows are the same."""
    ids, pos, rows, targets, weights, documents = [], [], [], [], [], []
    for index, example in enumerate(examples):
        offset, n = len(ids), len(example.input_ids)
        ids += example.input_ids
        pos += range(n)
        first = max(example.num_special_prefix - 1, 0)  # a BOS predicts the first real token
        rows += range(offset + first, offset + n - 1)
        targets += example.input_ids[first + 1 :]
        scored = n - 1 - first
        weights += [1.0 / scored if normalization == "document" else 1.0] * scored
        documents += [index] * scored
    tensors = _as_tensors(input_ids=ids, position_ids=pos, positions=rows, target_ids=targets)
    return PackedBatch(
        teacher_input_ids=tensors["input_ids"], teacher_position_ids=tensors["position_ids"], teacher_positions=tensors["positions"],
        student_input_ids=tensors["input_ids"], student_position_ids=tensors["position_ids"], student_positions=tensors["positions"],
        target_ids=tensors["target_ids"].squeeze(0), row_weights=torch.tensor(weights, dtype=torch.float32),
        num_documents=len(examples), num_target_tokens=len(targets), row_documents=torch.tensor(documents, dtype=torch.long),
    )


def pack_batch(examples: list[DocumentExample], cfg: ObjectiveConfig) -> PackedBatch:
    return pack_disc_batch(examples, cfg.normalization) if cfg.packs_splits else pack_lm_batch(examples, cfg.normalization)


# --------------------------------------------------------------------------- chunked projection + divergence


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if not cap else cap * torch.tanh(logits / cap)


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """fp32 ``softcap(logit_scale * hidden @ weight.T)``: ``[rows, hidden] -> [rows, vocab]``."""
    logits = (hidden @ weight.t()).float()
    return _softcap(logits.mul_(logit_scale) if logit_scale != 1.0 else logits, softcap)


def project_to_logits(hidden: torch.Tensor, head: OutputHead) -> torch.Tensor:
    """Full fp32 logits ``[rows, vocab]`` of hidden states ``[rows, hidden]``, exactly as the chunked loss computes
    them chunk by chunk (for checks and small probes; never for a whole batch)."""
    return _head_logits(hidden, head.weight, head.logit_scale, head.softcap)


class ChunkedLinearDivergence(torch.autograd.Function):
    """``sum_r w_r * (ce_scale * CE_r + kl_scale * T^2 * KL(teacher_r/T || student_r/T))`` from hidden states.

    A row's logits are ``softcap(logit_scale * hidden @ weight.T)``, as the model's own head computes them
    (:func:`disc_ray.model_check.output_head`).

    Projects ``[chunk, hidden]`` rows to the vocabulary at a time, and computes the gradients for the
    student's hidden states and head weight in the same pass (the chunk's logits are freed before the
    next chunk), so peak memory is O(chunk x vocab) instead of O(rows x vocab).

    ``forward`` arguments (N scored rows, H hidden size, V vocabulary):

    * ``student_hidden``: ``[N, H]`` float (fp32, or bf16 under mixed precision), the student's final hidden
      states at the scored positions; gets a gradient.
    * ``student_weight``: ``[V, H]`` same dtype, the student's output head weight, full (not a shard: under FSDP2
      the root module's parameters are still unsharded after its forward); gets a gradient (accumulated in fp32).
    * ``teacher_hidden``: ``[N, H]`` and ``teacher_weight``: ``[V, H]``, the teacher's (no gradient).
    * ``target_ids``: ``[N]`` long, the next token each row predicts (used by the CE term).
    * ``row_weights``: ``[N]`` float32, each row's weight in the sum (``PackedBatch.row_weights``).
    * ``ce_scale``, ``kl_scale``: float weights of the two terms (0 skips a term); ``temperature``: T > 0;
      ``chunk_size``: rows per chunk; ``softcap``: Gemma-style final logit cap or None.

    Logits, softmax and KL are computed in fp32 whatever the input dtype.
    Returns ``(loss, stats)``: ``loss`` a 0-dim fp32 tensor (the weighted SUM, not divided by any count);
    ``stats`` ``[2]`` fp32 ``[sum w*CE, sum w*T^2*KL]`` (no gradient).
    """

    @staticmethod
    def forward(ctx, student_hidden, student_weight, teacher_hidden, teacher_weight, target_ids, row_weights,
                ce_scale: float, kl_scale: float, temperature: float, chunk_size: int, softcap: float | None,
                logit_scale: float = 1.0):
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(student_hidden) if need_hidden_grad else None
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32) if need_weight_grad else None
        stats = torch.zeros(2, dtype=torch.float32, device=student_hidden.device)
        for start in range(0, student_hidden.shape[0], chunk_size):
            # In-place ops keep ~3 [chunk, vocab] fp32 buffers alive at a time.
            rows = slice(start, start + chunk_size)
            hidden = student_hidden[rows]
            weight = row_weights[rows].float().unsqueeze(1)
            logits = _head_logits(hidden, student_weight, logit_scale, softcap)
            grad_logits = None
            if kl_scale:
                student_log_probs = torch.log_softmax(logits / temperature if temperature != 1 else logits, dim=-1)
                teacher_logits = _head_logits(teacher_hidden[rows], teacher_weight, logit_scale, softcap)
                teacher_log_probs = torch.log_softmax(teacher_logits.div_(temperature), dim=-1)
                del teacher_logits
                teacher_probs = teacher_log_probs.exp()
                kl = teacher_log_probs.sub_(student_log_probs).mul_(teacher_probs).sum(-1)
                del teacher_log_probs
                stats[1] += (weight.squeeze(1) * kl).sum() * temperature**2
                # d/dlogits of T^2 * KL(p_t || softmax(z/T)) = T * (p_s - p_t)
                grad_logits = student_log_probs.exp_().sub_(teacher_probs).mul_(weight * (kl_scale * temperature))
                del teacher_probs, student_log_probs
            if ce_scale:
                log_probs = torch.log_softmax(logits, dim=-1)
                targets = target_ids[rows].unsqueeze(1)
                stats[0] -= (weight * log_probs.gather(1, targets)).sum()
                ce_grad = log_probs.exp_().scatter_add_(1, targets, torch.full_like(weight, -1.0)).mul_(weight * ce_scale)
                grad_logits = ce_grad if grad_logits is None else grad_logits.add_(ce_grad)
                del log_probs, ce_grad
            if softcap:  # d/draw of cap * tanh(raw / cap) = 1 - (logits / cap)^2
                grad_logits.mul_(logits.div_(softcap).square_().neg_().add_(1.0))
            if logit_scale != 1.0:
                grad_logits.mul_(logit_scale)
            del logits
            if need_hidden_grad:
                grad_hidden[rows] = (grad_logits.to(student_weight.dtype) @ student_weight).to(grad_hidden.dtype)
            if need_weight_grad:
                grad_weight.addmm_(grad_logits.t(), hidden.float())
            del grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = student_weight.dtype
        ctx.mark_non_differentiable(stats)
        loss = ce_scale * stats[0] + kl_scale * stats[1]
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None, None


def chunked_linear_divergence(student_hidden, student_weight, teacher_hidden, teacher_weight, target_ids, row_weights, *,
                              ce_scale=0.0, kl_scale=1.0, temperature=1.0, chunk_size=256, softcap=None, logit_scale=1.0):
    """Functional entry to :class:`ChunkedLinearDivergence`; returns ``(loss_sum, stats)``.

    ``student_hidden``: ``[N, H]`` float (gets a gradient); ``student_weight``: ``[V, H]`` same dtype (gets a
    gradient); ``teacher_hidden`` / ``teacher_weight``: ``[N, H]`` / ``[V, H]`` or None for CE only (then the
    KL term is off); ``target_ids``: ``[N]`` long; ``row_weights``: ``[N]`` float32. ``loss_sum``: 0-dim fp32,
    the weighted sum over rows (the caller divides by the step's global count); ``stats``: ``[2]`` fp32
    ``[sum w*CE, sum w*T^2*KL]``, without gradient. Logits are ``softcap(logit_scale * hidden @ weight.T)``
    (:class:`disc_ray.model_check.OutputHead`).
    """
    if teacher_hidden is None:
        teacher_hidden, teacher_weight, kl_scale = student_hidden.detach(), student_weight.detach(), 0.0
    loss, stats = ChunkedLinearDivergence.apply(student_hidden, student_weight, teacher_hidden, teacher_weight,
                                                target_ids, row_weights, float(ce_scale), float(kl_scale),
                                                float(temperature), int(chunk_size), softcap, float(logit_scale))
    return loss, stats


# --------------------------------------------------------------------------- model calls


def last_hidden_states(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Final (post-norm) hidden states ``[S, hidden]`` of a packed row, without computing any logits.

    Calls the model's own forward (so FSDP hooks run) with ``logits_to_keep`` empty. ``input_ids`` and
    ``position_ids`` are ``[1, S]`` long; the splits of a packed row are kept apart as
    :func:`disc_ray.model_check.packed_attention` says (restarting positions, or an explicit block mask).
    """
    no_logits = torch.zeros(0, dtype=torch.long, device=input_ids.device)
    with sdpa_without_cudnn():
        out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                    output_hidden_states=True, logits_to_keep=no_logits, **packed_attention_kwargs(model, position_ids))
    return out.hidden_states[-1][0]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to call backward on: loss_sum / normalizer
    ce_sum: float  # sum over documents (or tokens) of the CE term, before dividing by the normalizer
    kl_sum: float  # same for T^2 * KL
    num_documents: int
    num_target_tokens: int
    replay_sum: float = 0.0  # same for the replay examples' CE (+ weighted KL) (disc_ray/replay.py)


def compute_teacher_hidden(teacher, batch: PackedBatch) -> torch.Tensor:
    """Teacher hidden states at the scored positions ``[N, hidden]``: one forward over the packed documents."""
    with torch.no_grad():
        hidden = last_hidden_states(teacher, batch.teacher_input_ids, batch.teacher_position_ids)
        return hidden.index_select(0, batch.teacher_positions)


def compute_loss(student, teacher, batch: PackedBatch, cfg: ObjectiveConfig, normalizer: float | None = None) -> LossOutput:
    """The configured objective on one packed batch.

    ``normalizer`` is what the summed loss is divided by: the global number of documents (replay examples
    included) (``document`` normalization) or scored tokens (``token``) in the optimizer step, so the gradient
    does not depend on how documents are spread over micro-batches and ranks. Defaults to this batch's.
    """
    if normalizer is None:
        normalizer = batch.num_units[0 if cfg.normalization == "document" else 1]
    student_hidden = last_hidden_states(student, batch.student_input_ids, batch.student_position_ids)
    student_hidden = student_hidden.index_select(0, batch.student_positions)
    teacher_hidden = teacher_weight = None
    if cfg.name in TEACHER_OBJECTIVES:
        teacher_hidden = compute_teacher_hidden(teacher, batch)
        teacher_weight = output_head(teacher).weight.detach()
    if cfg.name == "disc":
        scales = dict(ce_scale=0.0, kl_scale=1.0, temperature=cfg.temperature)
    elif cfg.name == "cd_base":
        scales = dict(ce_scale=0.0, kl_scale=1.0, temperature=cfg.cd_base_temperature)
    elif cfg.name in ("ft", "talr", "lora", "rephrase"):
        scales = dict(ce_scale=1.0, kl_scale=0.0, temperature=1.0)
    else:
        scales = dict(ce_scale=1.0, kl_scale=cfg.ft_kl_beta, temperature=cfg.ft_kl_temperature)
    head = output_head(student)
    row_weights = batch.row_weights.to(student_hidden.device)
    plain_ce_sum = None
    if cfg.name == "talr":  # per-row TALR weights from a no-grad chunked NLL pass (disc_ray/talr.py)
        from disc_ray.talr import compute_talr_weights, compute_token_nll

        token_nll = compute_token_nll(student_hidden.detach(), head.weight.detach(), batch.target_ids, chunk_size=cfg.chunk_size,
                                      logit_scale=head.logit_scale, softcap=head.softcap)
        plain_ce_sum = float((row_weights * token_nll).sum())
        row_weights = row_weights * compute_talr_weights(token_nll, batch.row_documents.to(token_nll.device))
    loss_sum, stats = chunked_linear_divergence(
        student_hidden, head.weight, teacher_hidden, teacher_weight, batch.target_ids, row_weights,
        chunk_size=cfg.chunk_size, softcap=head.softcap, logit_scale=head.logit_scale, **scales,
    )
    ce_sum, kl_sum = stats.tolist()
    if batch.replay is not None:  # CE (+ KL) on the replay examples' responses (disc_ray/replay.py)
        from disc_ray.replay import compute_replay_loss

        replay_sum = compute_replay_loss(student, teacher, batch.replay, cfg)
        loss_sum = loss_sum + replay_sum
    if plain_ce_sum is not None:  # talr logs the plain CE (comparable with ft's); its loss is the weighted one
        ce_sum = plain_ce_sum
    return LossOutput(loss=loss_sum / normalizer, ce_sum=ce_sum, kl_sum=kl_sum, num_documents=batch.num_documents,
                      num_target_tokens=batch.num_target_tokens, replay_sum=float(replay_sum.detach()) if batch.replay is not None else 0.0)
