"""Packed attention that isolates splits without a dense ``[S, S]`` mask.

A packed row holds several sequences (the student's splits, or the teacher's documents), each with
``position_ids`` restarting at 0. transformers' ``sdpa`` path turns that into a dense block-diagonal
4D mask: memory and work grow with the square of the row's length. This module registers an
attention implementation, ``disc_packed_sdpa``, that runs ``F.scaled_dot_product_attention`` with
``is_causal=True`` on each sequence of the row separately (the diagonal blocks only), so the memory
of attention grows with the longest sequence, not with the packed row, and no mask is built (the
mask function registered with it returns none for such a row).

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
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout,
                                       is_causal=True, scale=scaling, enable_gqa=gqa)
        for s, e in bounds
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


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
