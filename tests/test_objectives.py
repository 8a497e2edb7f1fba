import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_packed_loss_matches_reference

from disc_ray.loop import build_lr_scheduler, build_optimizer, train_step
from disc_ray.config import TrainConfig
from disc_ray.objectives import ObjectiveConfig, chunked_linear_divergence, compute_loss, pack_batch, pack_disc_batch
from disc_ray.reference import reference_lm_loss
from disc_ray.splits import STRATEGIES, SplitConfig, prepare_document


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def examples_for(texts, tokenizer, strategy="sentence_boundary", with_splits=True, max_length=2048):
    cfg = SplitConfig(strategy=strategy, suffix_tokens=12, seed=7)
    return [e for t in texts for e in prepare_document(t, tokenizer, cfg, max_length, with_splits=with_splits)]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_packed_disc_equals_per_split_reference(student_teacher, tokenizer, bioasq_passages, strategy):
    student, teacher = student_teacher
    examples = examples_for(bioasq_passages[:3], tokenizer, strategy)
    assert sum(len(e.split_spans) for e in examples) >= 3
    cfg = ObjectiveConfig(name="disc", temperature=2.0, chunk_size=53)  # 53 does not divide the token count
    assert_packed_loss_matches_reference(student, teacher, examples, cfg, loss_atol=1e-5)


@pytest.mark.parametrize("name,beta", [("ft", 0.0), ("ft_kl", 0.1)])
def test_ft_baselines_equal_full_logits_reference(student_teacher, tokenizer, bioasq_passages, name, beta):
    student, teacher = student_teacher
    examples = examples_for(bioasq_passages[:3], tokenizer, with_splits=False)
    cfg = ObjectiveConfig(name=name, chunk_size=100)
    out = compute_loss(student, teacher, pack_batch(examples, cfg), cfg)
    out.loss.backward()
    ours = grads(student)
    student.zero_grad()
    reference = reference_lm_loss(student, teacher, examples, beta=beta, temperature=1.0)
    reference.backward()
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-5)
    for n, g in grads(student).items():
        torch.testing.assert_close(ours[n], g, rtol=1e-5, atol=1e-5, msg=n)
    assert (out.kl_sum > 0) == (name == "ft_kl")


def naive_divergence(h_s, w_s, h_t, w_t, targets, weights, ce_scale, kl_scale, temperature, softcap=None):
    """Full [rows, vocab] logits: what the chunked function must equal."""
    cap = (lambda x: softcap * torch.tanh(x / softcap)) if softcap else (lambda x: x)
    logits, teacher_logits = cap(h_s @ w_s.t()), cap(h_t @ w_t.t())
    ce = F.cross_entropy(logits, targets, reduction="none")
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                  log_target=True, reduction="none").sum(-1) * temperature**2
    return (weights * (ce_scale * ce + kl_scale * kl)).sum()


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100, 1000])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_chunked_equals_unchunked(chunk_size, softcap):
    gen = torch.Generator().manual_seed(0)
    rows, hidden, vocab = 100, 16, 301
    h_s = torch.randn(rows, hidden, generator=gen, requires_grad=True)
    w_s = torch.randn(vocab, hidden, generator=gen).mul_(0.3).requires_grad_()
    h_t, w_t = torch.randn(rows, hidden, generator=gen), torch.randn(vocab, hidden, generator=gen) * 0.3
    targets, weights = torch.randint(0, vocab, (rows,), generator=gen), torch.rand(rows, generator=gen)
    kwargs = dict(ce_scale=0.5, kl_scale=0.7, temperature=2.0)
    loss, stats = chunked_linear_divergence(h_s, w_s, h_t, w_t, targets, weights, chunk_size=chunk_size, softcap=softcap, **kwargs)
    loss.backward()
    chunked_grads = h_s.grad.clone(), w_s.grad.clone()
    h_s.grad = w_s.grad = None
    expected = naive_divergence(h_s, w_s, h_t, w_t, targets, weights, softcap=softcap, **kwargs)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked_grads[0], h_s.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_grads[1], w_s.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(0.5 * stats[0] + 0.7 * stats[1], loss.detach())


def test_kl_is_zero_for_equal_models_and_context_and_positive_otherwise(tiny_model, tokenizer, bioasq_passages):
    teacher = copy.deepcopy(tiny_model).requires_grad_(False)
    examples = examples_for(bioasq_passages[:2], tokenizer)
    same_context = ObjectiveConfig(name="ft_kl", ft_kl_beta=1.0)  # teacher and student read the same tokens
    out = compute_loss(tiny_model, teacher, pack_batch(examples, same_context), same_context)
    assert abs(out.kl_sum) < 1e-6
    disc = ObjectiveConfig(name="disc")  # same weights, but the teacher reads the prefix
    assert compute_loss(tiny_model, teacher, pack_disc_batch(examples), disc).kl_sum > 1e-4


def test_token_normalization_weights_every_token_equally(student_teacher, tokenizer, bioasq_passages):
    student, teacher = student_teacher
    examples = examples_for(bioasq_passages[:2], tokenizer)
    by_token = compute_loss(student, teacher, pack_disc_batch(examples, "token"), ObjectiveConfig(normalization="token"))
    batch = pack_disc_batch(examples, "token")
    with torch.no_grad():  # the mean over all scored tokens, from full logits (use_cache=False, or packing is ignored)
        t = teacher(input_ids=batch.teacher_input_ids, position_ids=batch.teacher_position_ids, use_cache=False).logits[0, batch.teacher_positions]
        s = student(input_ids=batch.student_input_ids, position_ids=batch.student_position_ids, use_cache=False).logits[0, batch.student_positions]
        expected = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean") * 4
    torch.testing.assert_close(by_token.loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_4x1_equals_1x4(student_teacher, tokenizer, bioasq_passages):
    """The accumulated gradient of 4 micro-batches of 1 equals that of 1 micro-batch of 4.

    Compared before the optimizer step (captured by a pre-step hook on the real AdamW): Adam divides by
    sqrt(v), so after one step a 1e-7 difference on a near-zero gradient becomes an lr-sized parameter
    difference, which says nothing about accumulation. The two gradients differ only by fp32 summation
    order (per-document sums added in another order, matmuls over other shapes): each element's error is
    bounded by a few hundred ulps of the largest terms summed into it, so the tolerance is relative to the
    largest gradient element (1e-5 x max|g|, ~80 ulps of it), plus rtol 1e-5 for large elements.
    """
    student, teacher = student_teacher
    examples = examples_for(bioasq_passages[:4], tokenizer)[:4]
    cfg = ObjectiveConfig(name="disc")
    results = {}
    for label, micro in (("4x1", [[e] for e in examples]), ("1x4", [examples])):
        model = copy.deepcopy(student)
        train_cfg = TrainConfig(lr=1e-3)
        optimizer = build_optimizer(model, train_cfg)
        captured = {}
        optimizer.register_step_pre_hook(
            lambda *_: captured.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
        metrics = train_step(model, teacher, [pack_disc_batch(m) for m in micro], optimizer,
                             build_lr_scheduler(optimizer, train_cfg, 10), cfg)
        results[label] = (metrics, captured)
    (metrics_a, grads_a), (metrics_b, grads_b) = results["4x1"], results["1x4"]
    torch.testing.assert_close(metrics_a["loss"], metrics_b["loss"], rtol=1e-5, atol=0.0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(student.parameters()))
    scale = max(g.abs().max().item() for g in grads_b.values())
    assert scale > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-5 * scale, msg=name)
    torch.testing.assert_close(metrics_a["grad_norm"], metrics_b["grad_norm"], rtol=1e-5, atol=0.0)


def test_packed_batch_never_crosses_documents(tokenizer, bioasq_passages):
    examples = examples_for(bioasq_passages[:3], tokenizer)
    batch = pack_disc_batch(examples)
    # student rows restart positions at each split; teacher positions restart at each document
    assert (batch.student_position_ids[0] == 0).sum() == sum(len(e.split_spans) for e in examples)
    assert (batch.teacher_position_ids[0] == 0).sum() == len(examples)
    # every scored token is the same token for teacher and student (alignment)
    teacher_next = batch.teacher_input_ids[0, batch.teacher_positions + 1]
    student_next = batch.student_input_ids[0, batch.student_positions + 1]
    assert torch.equal(teacher_next, batch.target_ids) and torch.equal(student_next, batch.target_ids)
    assert torch.all(batch.teacher_position_ids[0, batch.teacher_positions + 1] > 0), "never predicts across a document boundary"
    assert torch.all(batch.student_position_ids[0, batch.student_positions + 1] > 0), "never predicts across a split boundary"


@pytest.mark.parametrize("kwargs", [{"name": "sft"}, {"temperature": 0}, {"normalization": "x"}, {"chunk_size": 0}, {"ft_kl_beta": -1}])
def test_invalid_objective_config(kwargs):
    with pytest.raises(ValueError, match="objective"):
        ObjectiveConfig(**kwargs)
