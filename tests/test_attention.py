"""The packed attention path (disc_packed_sdpa): each split attends to itself alone, no dense mask."""

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import torch.nn.functional as F

from disc_ray.attention import PACKED_SDPA, PackedSDPA, register_packed_attention, segment_bounds
from disc_ray.objectives import ObjectiveConfig, compute_loss, pack_disc_batch
from disc_ray.reference import reference_disc_loss
from disc_ray.splits import SplitConfig, prepare_document


def tiny(model_type: str, attn: str, **overrides):
    register_packed_attention()
    config = AutoConfig.for_model(model_type, vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, **overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def test_segment_bounds_follow_position_resets():
    assert segment_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 9)]
    assert segment_bounds(torch.tensor([0, 1, 2])) == [(0, 3)]
    assert segment_bounds(torch.tensor([[0, 1, 0, 0, 1]])) == [(0, 2), (2, 3), (3, 5)]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_packed_rows_equal_each_split_alone_and_the_dense_path(model_type):
    dense = tiny(model_type, "sdpa")
    packed = tiny(model_type, PACKED_SDPA)
    packed.load_state_dict(dense.state_dict())
    lengths = [7, 30, 1, 12]
    ids = torch.randint(0, 49152, (1, sum(lengths)), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    out = {}
    for name, model in (("dense", dense), ("packed", packed)):
        hidden = model(input_ids=ids, position_ids=pos, use_cache=False, output_hidden_states=True).hidden_states[-1]
        hidden.square().sum().backward()
        out[name] = (hidden.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(out["packed"][0], out["dense"][0], rtol=1e-5, atol=1e-5)
    scale = max(g.abs().max().item() for g in out["dense"][1].values())  # fp32 summation order: relative to the largest
    for n, g in out["dense"][1].items():
        torch.testing.assert_close(out["packed"][1][n], g, rtol=1e-5, atol=1e-5 * scale, msg=n)
    start = 0
    with torch.no_grad():
        for n in lengths:
            alone = packed(input_ids=ids[:, start:start + n], position_ids=pos[:, start:start + n],
                           output_hidden_states=True).hidden_states[-1]
            torch.testing.assert_close(out["packed"][0][:, start:start + n], alone, rtol=1e-5, atol=1e-5)
            start += n


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_packed_function_matches_per_segment_autograd_with_and_without_dropout(dropout):
    """PackedSDPA (one output, gradients written per segment, forward recomputed in the backward with the
    forward's RNG replayed) == autograd through each segment's SDPA alone, outputs and q/k/v gradients
    (GQA: 4 query heads, 2 KV heads; dropout masks must be the forward's or the gradients differ)."""
    bounds = [(0, 5), (5, 17), (17, 18), (18, 40)]
    g = torch.Generator().manual_seed(1)
    leaves = [torch.randn(1, h, 40, 8, generator=g, requires_grad=True) for h in (4, 2, 2)]
    weight = torch.randn(1, 40, 4, 8, generator=g)
    torch.manual_seed(11)
    out = PackedSDPA.apply(*leaves, tuple(bounds), dropout, 0.3)
    (out * weight).sum().backward()
    packed = [out.detach(), *(t.grad for t in leaves)]
    for t in leaves:
        t.grad = None
    torch.manual_seed(11)
    pieces = [F.scaled_dot_product_attention(*(t[:, :, s:e] for t in leaves), dropout_p=dropout, is_causal=True, scale=0.3,
                                             enable_gqa=True) for s, e in bounds]
    reference = torch.cat(pieces, dim=2).transpose(1, 2)
    (reference * weight).sum().backward()
    assert out.shape == (1, 40, 4, 8) and out.is_contiguous()
    for got, want in zip(packed, [reference.detach(), *(t.grad for t in leaves)]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if dropout:  # the masks really dropped something: the output differs from dropout-free attention
        assert not torch.allclose(out, PackedSDPA.apply(*leaves, tuple(bounds), 0.0, 0.3))
    with torch.no_grad():  # the teacher's path saves nothing and gives the same output
        assert PackedSDPA.apply(*leaves, tuple(bounds), 0.0, 0.3).grad_fn is None


def test_activation_checkpointing_through_the_packed_path_keeps_gradients():
    """Non-reentrant activation checkpointing (model.activation_checkpointing) recomputes the packed attention's
    forward: the gradients equal those of the plain packed step."""
    model = tiny("llama", PACKED_SDPA)
    lengths = [9, 20, 3]
    ids = torch.randint(0, 49152, (1, sum(lengths)), generator=torch.Generator().manual_seed(4))
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, position_ids=pos, use_cache=False).logits.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-6, atol=1e-8, msg=n)


def test_disc_loss_and_gradients_through_the_packed_path_equal_the_per_split_reference(tokenizer, bioasq_passages):
    student = tiny("llama", PACKED_SDPA, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    examples = [e for t in bioasq_passages[:3] for e in prepare_document(t, tokenizer, SplitConfig(seed=7))]
    out = compute_loss(student, teacher, pack_disc_batch(examples), ObjectiveConfig())
    out.loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    reference = reference_disc_loss(student, teacher, examples)
    reference.backward()
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-6)
    for n, p in student.named_parameters():
        torch.testing.assert_close(packed_grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_a_sliding_window_keeps_a_mask_and_stays_exact():
    dense = tiny("mistral", "sdpa", sliding_window=4)
    packed = tiny("mistral", PACKED_SDPA, sliding_window=4)
    packed.load_state_dict(dense.state_dict())
    ids = torch.randint(0, 100, (1, 12))
    pos = torch.arange(12)[None] % 6
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids=ids, position_ids=pos).logits, dense(input_ids=ids, position_ids=pos).logits,
                                   rtol=1e-5, atol=1e-5)


def test_padded_batches_and_generation_keep_sdpa_masks():
    """Outside one unpadded packed row (left-padded batches, KV-cache decoding) the path is sdpa's own."""
    dense = tiny("llama", "sdpa")
    packed = tiny("llama", PACKED_SDPA)
    packed.load_state_dict(dense.state_dict())
    ids = torch.randint(3, 49152, (2, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(packed(input_ids=ids, attention_mask=mask).logits,
                                   dense(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)
        a = packed.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        b = dense.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
