"""Packed attention that isolates splits without a dense ``[S, S]`` mask.

A packed row holds several sequences (the student's splits, or the teacher's documents), each with
``position_ids`` restarting at 0. transformers' ``sdpa`` path turns that into a dense block-diagonal
4D mask: memory and work grow with the square of the row's length. This module registers an
attention implementation, ``disc_packed_sdpa``, that runs ``F.scaled_dot_product_attention`` with
``is_causal=True`` on each sequence of the row separately (the diagonal blocks only), so the memory
of attention grows with the longest sequence, not with the packed row, and no mask is built (the
mask function registered with it returns none for such a row).
Memory: :class:`PackedSDPA` writes each sequence's output and q/k/v gradients into full-size tensors and
recomputes each sequence's forward in the backward, so the call holds its output once and saves only q/k/v.

Exactness: each sequence attends to itself alone, causally, with the same scale and kernels as
``sdpa``; nothing else changes in the model. Where the call is not a packed causal self-attention
(a mask was given, a KV cache is in use, a batch of several rows) it falls back to transformers'
own ``sdpa`` function with ``sdpa``'s mask (padding, caches and sliding windows keep their masks). What it
cannot do exactly it refuses: attention logit softcapping (Gemma 2) raises ``ValueError`` (the loader
keeps ``eager`` for such models).

Segments start where ``position_ids[t] != position_ids[t-1] + 1`` (transformers' own rule for packed
rows, ``masking_utils.find_packed_sequence_indices``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

PACKED_SDPA = "disc_packed_sdpa"
# Architectures (config.model_type) loaded with this path by default: each passes ``position_ids`` to its
# attention function and is checked by tests/test_architectures.py (packed DiSC == the per-split reference)
# and by the probe (disc_ray.model_check) on the user's own model. Others keep ``sdpa`` / ``eager``.
PACKED_SDPA_ARCHITECTURES = frozenset({
    "llama", "qwen2", "qwen3", "mistral", "gemma3_text", "phi3", "olmo2", "granite", "cohere", "opt", "gpt2", "gpt_neox",
})


def segment_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the sequences packed in one row.

    Args:
        position_ids: ``[1, S]`` or ``[S]`` long, restarting at 0 (or jumping) where a sequence starts.
    Returns:
        half-open token ranges covering ``[0, S)`` in order.
    """
    p = position_ids.reshape(-1)
    starts = (torch.nonzero(p[1:] != p[:-1] + 1).flatten() + 1).tolist()
    edges = [0, *starts, p.numel()]
    return list(zip(edges[:-1], edges[1:]))


def packed_sdpa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention interface: ``query [B, H, S, D]``, ``key/value [B, H_kv, S, D]`` -> ``([B, S, H, D], None)``.

    Raises:
        ValueError: attention softcapping, or a sliding window shorter than a packed sequence.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
              and getattr(module, "is_causal", True) and is_causal is not False)
    if packed and (position_ids is None or position_ids.shape[-1] != query.shape[2]):
        raise ValueError(f"{PACKED_SDPA}: {type(module).__name__} does not pass position_ids to its attention, so "
                         "packed sequences cannot be told apart; load the model with sdpa attention")
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{PACKED_SDPA} cannot apply attention logit softcapping")
    bounds = segment_bounds(position_ids)
    window = kwargs.get("sliding_window")
    if window is not None and max(e - s for s, e in bounds) > window:
        raise ValueError(f"{PACKED_SDPA}: a packed sequence is longer than the sliding window ({window})")
    return PackedSDPA.apply(query, key, value, tuple(bounds), dropout, scaling), None


def _segment_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, start: int, end: int, dropout: float,
                  scaling: float | None) -> torch.Tensor:
    """Causal SDPA of tokens ``start:end`` of ``[B, H, S, D]`` q and ``[B, H_kv, S, D]`` k/v alone -> ``[B, H, end - start, D]``."""
    return F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                          dropout_p=dropout, is_causal=True, scale=scaling,
                                          enable_gqa=query.shape[1] != key.shape[1])


class PackedSDPA(torch.autograd.Function):
    """Causal SDPA on each ``(start, end)`` segment of a packed row, written into one ``[B, S, H, D]`` output.

    Memory: the output and the gradients of q/k/v are allocated once at full size and each segment writes its
    slice (no per-segment pieces concatenated, no full-size zero gradient per slice). Nothing is saved but q, k
    and v (which autograd holds for SDPA anyway): the backward recomputes each segment's forward (the per-segment
    kernels are cheap next to the model's matmuls) and runs SDPA's own backward on it, one segment at a time, so
    the attention holds one copy of its output instead of two (the kernel's saved output and the caller's). With
    dropout the forward's RNG state is replayed, so the recomputed masks are the forward's. Under ``no_grad``
    (the teacher) nothing is saved."""

    @staticmethod
    def forward(ctx, query, key, value, bounds, dropout, scaling):
        batch, heads, length, dim = query.shape
        needs = ctx.needs_input_grad[:3]
        if any(needs):
            ctx.save_for_backward(query, key, value)
            ctx.bounds, ctx.dropout, ctx.scaling = bounds, dropout, scaling
            ctx.rng = _rng_state(query.device) if dropout else None
        out = query.new_empty(batch, length, heads, dim)
        for start, end in bounds:
            out[:, start:end] = _segment_sdpa(query, key, value, start, end, dropout, scaling).transpose(1, 2)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        needs = ctx.needs_input_grad[:3]
        inputs = ctx.saved_tensors
        grads = [torch.empty_like(t) if n else None for t, n in zip(inputs, needs)]
        with _replayed_rng(inputs[0].device, ctx.rng), torch.enable_grad():
            for start, end in ctx.bounds:
                segment = [t.detach()[:, :, start:end].requires_grad_(n) for t, n in zip(inputs, needs)]
                piece = _segment_sdpa(*segment, 0, end - start, ctx.dropout, ctx.scaling)
                pieces = iter(torch.autograd.grad(piece, [t for t in segment if t.requires_grad],
                                                  grad_out[:, start:end].transpose(1, 2)))
                for grad in grads:
                    if grad is not None:
                        grad[:, :, start:end] = next(pieces)
        return (*grads, None, None, None)


def _rng_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextlib.contextmanager
def _replayed_rng(device: torch.device, state):
    """Within the block the RNG (the CPU's, and ``device``'s if CUDA) starts from ``state`` (:func:`_rng_state`) and is
    restored after it; ``state=None`` changes nothing."""
    if state is None:
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.set_rng_state(state[0])
        if cuda:
            torch.cuda.set_rng_state(state[1], device)
        yield


def packed_sdpa_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                     attention_mask: torch.Tensor | None = None, local_size: int | None = None, **kwargs):
    """transformers mask interface: no mask for one unpadded row without a cache or a sliding window (the
    attention function then isolates the sequences by their position ids); anything else (padding, a KV
    cache, sliding windows) gets ``sdpa``'s own mask, and the attention function falls back to ``sdpa``."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and batch_size == 1 and q_offset == 0 and q_length == kv_length and local_size is None:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     attention_mask=attention_mask, local_size=local_size, **kwargs)


def register_packed_attention() -> str:
    """Register ``disc_packed_sdpa`` (attention and mask functions) with transformers (idempotent); returns
    its name for ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention_forward)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA
