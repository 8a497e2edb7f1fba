"""TALR, token-adaptive loss reweighting (Lin et al., "SFT Doesn't Always Hurt General Capabilities", 2025).

The ``talr`` baseline of the DiSC paper (arXiv 2602.16093): next-token cross-entropy on the document in which each
token's NLL is multiplied by a detached weight that shrinks for tokens the model finds unlikely::

    p_t   = max(exp(-NLL_t), 1e-6)                    (the model's own probability of the target token)
    tau_d = max(mean_{t in d} NLL_t, 1e-6)            (document d's mean NLL: the "dynamic tau")
    w_t   = max(p_t ** (1 / tau_d), 0.01)             (no gradient flows through w_t)
    loss_d = sum_{t in d} w_t * NLL_t / n_d           (n_d: document d's scored tokens)

Source: ``talr_loss`` / ``compute_dynamic_tau`` in ``src/disc/objectives.py`` of the paper's released code
(github.com/shankarp8/distillation-retains-capabilities, commit 591331d251880789f943a313101d857e9b3da9ee):
``tau`` is the MEDIAN over the batch's sequences of each sequence's mean NLL (floored at 1e-6), recomputed every
step (``talr_tau=None``), probabilities clamped at ``min_prob=1e-6``, weights floored at ``weight_floor=0.01``
under ``no_grad``, and ``normalize="mean"``: ``sum(w * NLL) / number of tokens``. Its trainer runs the
token-level methods with ``batch_size=1`` (one document per optimizer step), so the median is over ONE sequence:
tau is that document's mean NLL and the loss is that document's weighted mean.

How that maps onto disc-ray: tau is computed PER DOCUMENT (the median of one sequence, as the released code has
it), whatever the batch holds, so a document's loss does not depend on which documents share its micro-batch,
rank or step (grad-accum 4x1 == 1x4 and 2 ranks == 1 rank hold as for ``ft``). With ``objective.normalization:
document`` (default) the step's loss is the mean over documents of ``loss_d`` above: exactly the released code at
one document per step, averaged over documents for larger batches. With ``token`` it is
``sum over all tokens of w_t * NLL_t / the step's global token count`` (tau still per document).

Inside the chunked head: a first no-grad chunked pass gives the per-token NLL (``[N]`` fp32; never a
``[tokens, vocab]`` tensor), the weights are built from it, and the weighted cross-entropy then runs through
:class:`disc_ray.objectives.ChunkedLinearDivergence` with per-row weights ``row_weights * w_t``. The extra cost
is one forward vocabulary projection of the scored rows (no softmax gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TALR_MIN_PROB = 1e-6
TALR_WEIGHT_FLOOR = 0.01
TALR_MIN_TAU = 1e-6


@torch.no_grad()
def compute_token_nll(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor, *, chunk_size: int = 256,
                      logit_scale: float = 1.0, softcap: float | None = None) -> torch.Tensor:
    """Per-row next-token NLL ``[N]`` fp32 of hidden states ``[N, H]`` under the head ``weight`` ``[V, H]``, in row
    chunks of ``chunk_size`` (peak memory O(chunk x vocab)). Logits as the model computes them:
    ``softcap(logit_scale * hidden @ weight.T)`` in fp32. No gradient."""
    from disc_ray.objectives import _head_logits

    nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        logits = _head_logits(hidden[rows], weight, logit_scale, softcap)
        nll[rows] = torch.logsumexp(logits, dim=-1) - logits.gather(1, target_ids[rows].unsqueeze(1)).squeeze(1)
    return nll


@torch.no_grad()
def compute_talr_weights(token_nll: torch.Tensor, row_documents: torch.Tensor) -> torch.Tensor:
    """TALR weights ``w_t`` ``[N]`` fp32 (module docstring) from per-token NLL ``[N]`` fp32 and each row's document
    index ``[N]`` long (0..D-1 within the batch). tau is each document's own mean NLL. Raises ValueError when the
    shapes differ."""
    if token_nll.shape != row_documents.shape:
        raise ValueError(f"compute_talr_weights: token_nll {tuple(token_nll.shape)} and row_documents "
                         f"{tuple(row_documents.shape)} differ")
    num_documents = int(row_documents.max().item()) + 1 if row_documents.numel() else 0
    sums = torch.zeros(num_documents, dtype=torch.float32, device=token_nll.device).index_add_(0, row_documents, token_nll)
    counts = torch.bincount(row_documents, minlength=num_documents).clamp_min(1).to(torch.float32)
    tau = (sums / counts).clamp_min(TALR_MIN_TAU)[row_documents]
    log_p = (-token_nll).clamp_min(math.log(TALR_MIN_PROB))  # log max(p, 1e-6)
    return torch.exp(log_p / tau).clamp_min(TALR_WEIGHT_FLOOR)


# --------------------------------------------------------------------------- reference (slow, for verification)


def reference_talr_loss(student, examples) -> torch.Tensor:
    """TALR as the released code computes it at one document per step (``talr_loss(logits, labels, tau=None)``),
    on full ``[tokens, vocab]`` logits, one document at a time; the mean over documents. For checks only.
    Returns a 0-dim tensor with gradient to the student's parameters."""
    device = next(student.parameters()).device
    per_document = []
    for example in examples:
        ids = torch.tensor([example.input_ids], device=device)
        first = max(example.num_special_prefix - 1, 0)  # a BOS predicts the first real token (as pack_lm_batch)
        logits = student(input_ids=ids).logits[0, first:-1].float()
        labels = ids[0, first + 1 :]
        target_log_probs = F.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        nll = -target_log_probs
        tau = max(nll.mean().detach().item(), TALR_MIN_TAU)  # median of ONE sequence's mean NLL
        target_probs = torch.clamp(target_log_probs.exp(), min=TALR_MIN_PROB)
        with torch.no_grad():
            weights = torch.clamp(target_probs.pow(1.0 / tau), min=TALR_WEIGHT_FLOOR)
        per_document.append((weights * nll).sum() / nll.numel())
    return torch.stack(per_document).mean()
