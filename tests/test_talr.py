"""TALR (disc_ray/talr.py): the packed, chunked loss and gradients equal the released code's per-document
full-logits computation; the checks are shown to fail for a wrong tau or a weight that is not detached."""

import pytest
import torch
import torch.nn.functional as F

from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_batch
from disc_ray.splits import SplitConfig, prepare_document
from disc_ray.talr import TALR_WEIGHT_FLOOR, compute_talr_weights, compute_token_nll, reference_talr_loss


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def lm_examples(texts, tokenizer):
    return [e for t in texts for e in prepare_document(t, tokenizer, SplitConfig(seed=7), 2048, with_splits=False)]


@pytest.fixture()
def sharp_student(student_teacher):
    """The perturbed tiny student with its final norm scaled up: sharper distributions, so per-token NLLs (and the
    weights) spread widely (a random tiny model alone gives every token an NLL of ~ln(vocab) and weights ~1/e). The
    0.01 floor and the 1e-6 probability clamp are reached in :func:`test_floor_and_probability_clamp_in_the_gradient`."""
    student, _ = student_teacher
    with torch.no_grad():
        student.model.norm.weight.mul_(4.0)
    return student


def talr_and_reference(student, examples, chunk_size=53):
    cfg = ObjectiveConfig(name="talr", chunk_size=chunk_size)  # 53 does not divide the token count
    out = compute_loss(student, None, pack_batch(examples, cfg), cfg)
    out.loss.backward()
    ours = grads(student)
    student.zero_grad()
    reference = reference_talr_loss(student, examples)
    reference.backward()
    expected = grads(student)
    student.zero_grad()
    return out, ours, reference, expected


def test_talr_equals_per_document_full_logits_reference(sharp_student, tokenizer, bioasq_passages):
    examples = lm_examples(bioasq_passages[:3], tokenizer)
    assert len(examples) == 3
    out, ours, reference, expected = talr_and_reference(sharp_student, examples)
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-5)
    assert ours.keys() == expected.keys() and len(ours) == len(list(sharp_student.parameters()))
    for name in ours:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    # the regime the test covers: weights spread widely and the documents' taus differ
    batch = pack_batch(examples, ObjectiveConfig(name="talr"))
    with torch.no_grad():
        from disc_ray.objectives import last_hidden_states

        hidden = last_hidden_states(sharp_student, batch.student_input_ids, batch.student_position_ids)[batch.student_positions]
        nll = compute_token_nll(hidden, sharp_student.lm_head.weight, batch.target_ids)
        weights = compute_talr_weights(nll, batch.row_documents)
    assert weights.min().item() < 0.75 * weights.max().item(), (weights.min(), weights.max())
    taus = [nll[batch.row_documents == d].mean().item() for d in range(3)]
    assert max(taus) - min(taus) > 0.05, taus
    assert out.ce_sum / 3 > out.loss.item()  # the logged CE is the plain one, above the down-weighted loss


def full_logit_variant(student, examples, *, tau_of, detach=True):
    """The released formula with a deliberate change (``tau_of`` picks each document's tau from all documents'
    mean NLLs; ``detach=False`` lets the gradient flow through the weights): what a wrong implementation gives."""
    per_document, nlls = [], []
    for example in examples:
        ids = torch.tensor([example.input_ids])
        logits = student(input_ids=ids).logits[0, :-1]
        nlls.append(F.cross_entropy(logits, ids[0, 1:], reduction="none"))
    means = torch.stack([n.mean() for n in nlls]).detach()
    for index, nll in enumerate(nlls):
        tau = tau_of(means, index)
        weights = torch.exp(-nll / tau).clamp(min=1e-6).clamp(min=TALR_WEIGHT_FLOOR)
        per_document.append(((weights if not detach else weights.detach()) * nll).mean())
    return torch.stack(per_document).mean()


def test_a_wrong_tau_or_an_attached_weight_fails_the_comparison(sharp_student, tokenizer, bioasq_passages):
    """The mutations the equivalence test must catch: tau as the batch median (not per document), a fixed tau of 1,
    and weights that carry a gradient. Each moves the loss or the gradients far beyond the 1e-5 tolerance."""
    examples = lm_examples(bioasq_passages[:3], tokenizer)
    assert all(e.num_special_prefix == 0 for e in examples)  # the variant scores from the first token, as pack_lm_batch
    out, ours, reference, _ = talr_and_reference(sharp_student, examples)
    own = full_logit_variant(sharp_student, examples, tau_of=lambda means, i: means[i])
    torch.testing.assert_close(own, reference, rtol=1e-5, atol=1e-5)  # the variant helper itself is faithful
    for tau_of in (lambda means, i: means.median(), lambda means, i: torch.tensor(1.0)):
        wrong = full_logit_variant(sharp_student, examples, tau_of=tau_of)
        assert abs(wrong.item() - out.loss.item()) > 1e-3 * abs(out.loss.item()), (wrong.item(), out.loss.item())
    sharp_student.zero_grad()
    full_logit_variant(sharp_student, examples, tau_of=lambda means, i: means[i], detach=False).backward()
    attached = grads(sharp_student)
    worst = max((attached[n] - ours[n]).abs().max().item() / ours[n].abs().max().item() for n in ours)
    assert worst > 1e-2, worst


def test_each_documents_loss_is_independent_of_its_batch(sharp_student, tokenizer, bioasq_passages):
    """Per-document tau: the loss of a batch of 3 equals the sum of the 3 single-document losses (same divisor),
    which is what makes grad-accum 3x1 == 1x3 and 2 ranks == 1 rank hold for talr as for ft."""
    examples = lm_examples(bioasq_passages[:3], tokenizer)
    cfg = ObjectiveConfig(name="talr", chunk_size=64)
    with torch.no_grad():
        together = compute_loss(sharp_student, None, pack_batch(examples, cfg), cfg, normalizer=3).loss
        apart = sum(compute_loss(sharp_student, None, pack_batch([e], cfg), cfg, normalizer=3).loss for e in examples)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-7)


def test_token_normalization_divides_the_weighted_sum_by_the_token_count(sharp_student, tokenizer, bioasq_passages):
    examples = lm_examples(bioasq_passages[:2], tokenizer)
    cfg = ObjectiveConfig(name="talr", normalization="token")
    batch = pack_batch(examples, cfg)
    with torch.no_grad():
        ours = compute_loss(sharp_student, None, batch, cfg).loss
        total = sum(reference_talr_loss(sharp_student, [e]) * (len(e.input_ids) - 1) for e in examples)
    torch.testing.assert_close(ours, total / batch.num_target_tokens, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunked_token_nll_equals_cross_entropy(chunk_size):
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(50, 16, generator=gen), torch.randn(301, 16, generator=gen)
    targets = torch.randint(0, 301, (50,), generator=gen)
    expected = F.cross_entropy(30.0 * torch.tanh(2.0 * hidden @ weight.t() / 30.0), targets, reduction="none")
    nll = compute_token_nll(hidden, weight, targets, chunk_size=chunk_size, logit_scale=2.0, softcap=30.0)
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["floor", "clamp"])
def test_floor_and_probability_clamp_in_the_gradient(case):
    """Chunked TALR equals the released formula on full logits, gradients included, where its two limits act. Rows
    target the most likely token, except 1 in ``every`` that targets the least likely one (probability under 1e-6,
    clamped to 1e-6). ``floor``: tau ~2, so that row's weight 1e-6 ** (1/tau) is floored at 0.01. ``clamp``: tau ~14,
    so the clamp, not the floor, sets that weight (1e-6 ** (1/14) ~ 0.37 instead of p ** (1/14) ~ 0.01). The clamp
    makes the floor reachable only when tau < ln(1e6) / ln(100) = 3 nats."""
    from disc_ray.objectives import chunked_linear_divergence

    scale, every = {"floor": (1.5, 20), "clamp": (3.0, 5)}[case]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(60, 16, generator=gen).requires_grad_()
    weight = torch.randn(301, 16, generator=gen).mul_(scale).requires_grad_()
    documents = torch.arange(60) // 20  # three documents of 20 rows
    with torch.no_grad():
        logits = hidden @ weight.t()
        targets = torch.where(torch.arange(60) % every == 0, logits.argmin(-1), logits.argmax(-1))
    nll = compute_token_nll(hidden.detach(), weight.detach(), targets, chunk_size=7)
    talr_weights = compute_talr_weights(nll, documents)
    rare = torch.arange(60) % every == 0
    assert (nll[rare] > 14).all() and (talr_weights[~rare] > 0.3).all(), talr_weights  # p < 1e-6: the clamp applies
    if case == "floor":
        assert (talr_weights[rare] == TALR_WEIGHT_FLOOR).all(), talr_weights
    else:
        assert (talr_weights[rare] > 0.2).all() and (talr_weights[rare] < 0.6).all(), talr_weights
    row_weights = torch.full((60,), 1.0 / 20)
    loss, _ = chunked_linear_divergence(hidden, weight, None, None, targets, row_weights * talr_weights, ce_scale=1.0,
                                        chunk_size=7)
    loss.backward()
    ours = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = F.log_softmax(hidden @ weight.t(), -1).gather(1, targets.unsqueeze(1)).squeeze(1)  # released code, per document
    expected = 0.0
    for d in range(3):
        lp = full[documents == d]
        tau = max((-lp).mean().item(), 1e-6)
        with torch.no_grad():
            w = torch.clamp(torch.clamp(lp.exp(), min=1e-6).pow(1.0 / tau), min=0.01)
        expected = expected + (w * -lp).sum() / lp.numel()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[0], hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], weight.grad, rtol=1e-5, atol=1e-6)
