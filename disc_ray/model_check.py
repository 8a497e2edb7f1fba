"""Is the DiSC loss exact for this model? A probe run on the user's actual model before training or scoring.

The training loss, the MCQ log-likelihoods and drift never call the model's own head: they take the final
hidden states (:func:`disc_ray.objectives.last_hidden_states`) and project them to the vocabulary in row
chunks (:class:`disc_ray.objectives.ChunkedLinearDivergence`), and the student runs all splits of a batch
in one packed row. Both are only right if

1. the chunked projection (head weight, times the architecture's logit scale, through its final softcap)
   reproduces the model's own ``forward`` logits: granite divides them by ``logits_scaling``, cohere
   multiplies them by ``logit_scale``, gemma 2/3 soft-cap them, and an unknown architecture may do
   anything else after its head; and
2. a split in a packed row sees only itself: restarting ``position_ids`` at 0 isolates the splits for most
   architectures (transformers builds a block-diagonal causal mask from them), not for OPT, which
   gets an explicit block-diagonal 4D mask instead (:func:`packed_attention`).

:func:`check_model` measures both on a few hundred tokens (a second or two on CPU for a 135M model) and
raises :class:`ModelCheckError` with one line naming the architecture and what failed. Nothing is
silently approximated: what the probe cannot confirm is refused.

    check = check_model_source("/models/Qwen2.5-0.5B-Instruct")   # loads on CPU, checks, frees
    check = check_model(model, tokenizer)                          # an already loaded model
"""

from __future__ import annotations

import dataclasses
import time

import torch

from disc_ray.attention import PACKED_SDPA
from disc_ray.models import ModelLoadError

# Architectures (config.model_type) whose forward isolates packed splits when position ids restart at 0:
# each is checked by tests/test_architectures.py against the per-split reference. Any other architecture
# gets an explicit block-diagonal mask, which the probe then verifies.
POSITION_ID_PACKING = frozenset({
    "llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "olmo2", "granite", "cohere",
    "gpt2", "gpt_neox", "falcon",
})
# Attention implementations that take an explicit 4D mask (disc_packed_sdpa hands a mask on to sdpa).
BLOCK_MASK_ATTENTION = ("sdpa", "eager", PACKED_SDPA)
PROBE_TEXT = (
    "The committee met on Tuesday to review the annual budget. Several members asked for more detail on the "
    "travel costs. The chair agreed to publish a breakdown by region before the next meeting. In the meantime, "
    "spending on new equipment was frozen. Staff were told that salaries would not be affected."
)
PROBE_SEGMENTS = 3


class ModelCheckError(ModelLoadError, ValueError):
    """The DiSC loss (or a log-likelihood) cannot be computed exactly for this model; the message is one line."""


@dataclasses.dataclass(frozen=True)
class OutputHead:
    """What turns final hidden states into the model's logits: ``softcap(scale * hidden @ weight.T)``."""

    weight: torch.Tensor  # [vocab, hidden], the model's dtype
    logit_scale: float  # granite: 1 / logits_scaling; cohere: logit_scale; else 1
    softcap: float | None  # gemma 2/3: final_logit_softcapping; else None


@dataclasses.dataclass(frozen=True)
class ModelCheck:
    """The probe's findings (relative errors: max |difference| / max |model's own logits|)."""

    architecture: str
    attn_implementation: str
    packing: str  # "position_ids" or "block_mask"
    head_rel_error: float
    isolation_rel_error: float
    probe_tokens: int
    seconds: float

    def format(self) -> str:
        return (f"{self.architecture} ({self.attn_implementation} attention, packed by {self.packing}): head rel. error "
                f"{self.head_rel_error:.1e}, packed-split rel. error {self.isolation_rel_error:.1e} on "
                f"{self.probe_tokens} probe tokens ({self.seconds:.1f} s)")


def architecture_name(model) -> str:
    return f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')})"


def logit_scale(model) -> float:
    """The factor the model's forward multiplies its head's output by (granite, cohere); 1.0 for the others."""
    config, scale = model.config, 1.0
    if getattr(config, "logits_scaling", None):  # granite: logits / logits_scaling
        scale /= float(config.logits_scaling)
    if getattr(config, "logit_scale", None):  # cohere / cohere2: logits * logit_scale
        scale *= float(config.logit_scale)
    return scale


def final_logit_softcap(model) -> float | None:
    """Gemma-style ``cap * tanh(logits / cap)`` after the head; None when the model has no cap."""
    return getattr(model.config, "final_logit_softcapping", None) or None


def output_head(model) -> OutputHead:
    """The model's output head as the chunked projection applies it.

    Raises :class:`ModelCheckError` when the head has a bias (not applied by the chunked projection)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ModelCheckError(f"{architecture_name(model)}: no output embedding weight to project hidden states with")
    if getattr(head, "bias", None) is not None:
        raise ModelCheckError(f"{architecture_name(model)}: the output head has a bias, which the chunked DiSC "
                              "projection does not apply; this architecture is not supported")
    return OutputHead(weight=head.weight, logit_scale=logit_scale(model), softcap=final_logit_softcap(model))


def packed_attention(model) -> str:
    """How packed splits are kept apart: ``position_ids`` for a model loaded with ``disc_packed_sdpa`` (one causal
    SDPA per split, found from the restarting positions) and for the architectures in :data:`POSITION_ID_PACKING`
    (transformers builds a block-diagonal mask from restarting positions), else ``block_mask`` (an explicit 4D
    block-diagonal causal mask)."""
    if model.config._attn_implementation == PACKED_SDPA:
        return "position_ids"
    return "position_ids" if getattr(model.config, "model_type", None) in POSITION_ID_PACKING else "block_mask"


def block_causal_mask(position_ids: torch.Tensor, attn_implementation: str) -> torch.Tensor:
    """A 4D block-diagonal causal mask ``[B, 1, S, S]`` for packed rows whose positions restart at 0 per segment.

    ``position_ids``: ``[B, S]`` long. Bool (True = attend) for ``sdpa``; additive float32 (0 or the float32
    minimum) for ``eager``, which adds the mask to its attention scores. Memory: B x S^2 elements."""
    segment = torch.cumsum((position_ids == 0).long(), dim=-1)  # [B, S]
    same_segment = segment.unsqueeze(-1) == segment.unsqueeze(-2)
    causal = torch.ones(position_ids.shape[-1], position_ids.shape[-1], dtype=torch.bool, device=position_ids.device).tril()
    allowed = (same_segment & causal).unsqueeze(1)
    if attn_implementation in ("sdpa", PACKED_SDPA):
        return allowed
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill_(~allowed, torch.finfo(torch.float32).min)


def packed_attention_kwargs(model, position_ids: torch.Tensor) -> dict:
    """Extra forward kwargs for a packed row: ``{}`` or ``{"attention_mask": 4D block mask}`` (see :func:`packed_attention`)."""
    if packed_attention(model) == "position_ids":
        return {}
    return {"attention_mask": block_causal_mask(position_ids, model.config._attn_implementation)}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).abs().max() / reference.abs().max().clamp_min(1e-6))


def _probe_segments(model, tokenizer, device) -> list[torch.Tensor]:
    """Three token segments from the probe text (or seeded random ids without a tokenizer), each ``[1, L]``."""
    if tokenizer is not None:
        ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    else:
        ids = torch.randint(0, model.config.vocab_size, (60,), generator=torch.Generator().manual_seed(0)).tolist()
    window = getattr(model.config, "max_position_embeddings", None) or len(ids)
    size = max(min(len(ids) // PROBE_SEGMENTS, window), 2)
    return [torch.tensor([ids[i * size : (i + 1) * size]], device=device) for i in range(PROBE_SEGMENTS)]


def tolerance_for(dtype: torch.dtype) -> float:
    """Relative error accepted: fp32 agrees to ~1e-6, bf16/fp16 to ~1e-2 (different summation orders)."""
    return 1e-4 if dtype == torch.float32 else 5e-2


@torch.no_grad()
def check_model(model, tokenizer=None) -> ModelCheck:
    """Probe ``model`` (any device/dtype, not FSDP-sharded) as the chunked loss uses it; raise or return findings.

    Compares, per probe segment, the model's own ``forward`` logits ``[L, vocab]`` with (1) the chunked
    projection of the segment's hidden states and (2) the same segment inside one packed row of all three.
    The result is remembered on the model, so a second call costs nothing.

    Raises :class:`ModelCheckError` (one line: architecture and what failed)."""
    from disc_ray.objectives import chunked_linear_divergence, last_hidden_states, project_to_logits

    cached = getattr(model, "_disc_ray_model_check", None)
    if cached is not None:
        return cached
    started = time.perf_counter()
    name, attn = architecture_name(model), model.config._attn_implementation
    packing = packed_attention(model)
    head = output_head(model)
    if packing == "block_mask":
        if attn not in BLOCK_MASK_ATTENTION:
            raise ModelCheckError(f"{name}: packed splits need an explicit block-diagonal mask in this architecture, "
                                  f"which {attn!r} attention does not take; load it with sdpa or eager attention")
        if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
            raise ModelCheckError(f"{name}: packed splits need an explicit block-diagonal mask in this architecture, "
                                  "which would override its sliding-window attention; not supported")
    device, tolerance = next(model.parameters()).device, tolerance_for(head.weight.dtype)
    segments = _probe_segments(model, tokenizer, device)
    was_training = model.training
    model.eval()
    try:
        # The model's own logits and, from the same forward, the final hidden states the chunked path projects.
        outputs = [model(input_ids=s, use_cache=False, output_hidden_states=True) for s in segments]
        own = [out.logits[0].float() for out in outputs]
        alone = [project_to_logits(out.hidden_states[-1][0], head) for out in outputs]
        head_error = max(_relative_error(a, o) for a, o in zip(alone, own))
        # The autograd function itself (chunked, with the scale and cap): log-likelihood of the probe tokens.
        hidden, targets = outputs[0].hidden_states[-1][0, :-1], segments[0][0, 1:]
        _, stats = chunked_linear_divergence(hidden, head.weight, None, None, targets, torch.ones(targets.numel(), device=device),
                                             ce_scale=1.0, kl_scale=0.0, chunk_size=7, softcap=head.softcap,
                                             logit_scale=head.logit_scale)
        reference_nll = torch.nn.functional.cross_entropy(own[0][:-1], targets, reduction="sum")
        head_error = max(head_error, abs(float(stats[0]) - float(reference_nll)) / max(float(reference_nll), 1e-6))
        if head_error > tolerance:
            raise ModelCheckError(f"{name}: the chunked vocabulary projection does not reproduce the model's own logits "
                                  f"(rel. error {head_error:.1e} > {tolerance:.0e}): its forward transforms the head's "
                                  "output in a way disc-ray does not apply; this architecture is not supported")
        positions = [torch.arange(s.shape[1], device=device).unsqueeze(0) for s in segments]
        packed_ids, packed_positions = torch.cat(segments, dim=1), torch.cat(positions, dim=1)
        packed = project_to_logits(last_hidden_states(model, packed_ids, packed_positions), head)
        pieces = packed.split([s.shape[1] for s in segments])
        isolation_error = max(_relative_error(p, o) for p, o in zip(pieces, own))
        if isolation_error > tolerance:
            raise ModelCheckError(f"{name}: a split in a packed row does not give the logits of the split alone "
                                  f"(rel. error {isolation_error:.1e} with {attn} attention, packed by {packing}): "
                                  "its attention leaks across splits; this architecture is not supported")
    finally:
        model.train(was_training)
    result = ModelCheck(architecture=name, attn_implementation=attn, packing=packing, head_rel_error=head_error,
                        isolation_rel_error=isolation_error, probe_tokens=int(packed_ids.shape[1]),
                        seconds=time.perf_counter() - started)
    model._disc_ray_model_check = result
    return result


def check_model_source(name_or_path: str, *, trust_remote_code: bool = False, cache_dir=None) -> ModelCheck:
    """Load ``name_or_path`` on the CPU in fp32 (as the training workers will, attention chosen the same way),
    run :func:`check_model`, free it. ``seconds`` includes the load. Raises :class:`ModelCheckError`."""
    from disc_ray.models import load_model_and_tokenizer

    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(name_or_path, dtype=torch.float32, device="cpu",
                                                trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    result = check_model(model, tokenizer)
    del model
    return dataclasses.replace(result, seconds=time.perf_counter() - started)
