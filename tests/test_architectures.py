"""Any instruct model a user brings: the exact DiSC loss, or a one-line refusal before training.

Tiny random models of 14 Hugging Face architectures (``AutoConfig.for_model``, no downloads), saved to a
folder and loaded through the product's own loader. Each either passes the probe check and gives a packed
``compute_loss`` equal to the per-split reference (loss and gradients, 1e-5 in fp32), or is refused at
load with :class:`ModelCheckError`. The probe itself must catch a broken head and a leaking attention.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_packed_loss_matches_reference, assert_two_ranks_match_one_process

from disc_ray.model_check import ModelCheckError, check_model, check_model_source, packed_attention
from disc_ray.models import load_model_and_tokenizer
from disc_ray.objectives import ObjectiveConfig
from disc_ray.splits import SplitConfig, prepare_document

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=2048)
ARCHITECTURES = {
    "llama": SMALL,
    "qwen2": SMALL,
    "qwen3": SMALL,
    "mistral": SMALL,
    "gemma2": dict(SMALL, query_pre_attn_scalar=16),  # final_logit_softcapping 30, attention softcap 50: eager attention
    "gemma3_text": dict(SMALL, query_pre_attn_scalar=16, final_logit_softcapping=30.0),
    "phi3": SMALL,
    "olmo2": SMALL,
    "granite": dict(SMALL, logits_scaling=8.0),  # logits / 8 after the head
    "cohere": dict(SMALL, logit_scale=0.25),  # logits * 0.25 after the head
    # dropout off (OPT and GPT-2 default to 0.1): ranks and the single process must compute the same loss
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64,
                max_position_embeddings=2048, dropout=0.0),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=2048, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=2048),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=2048),
    "phi": dict(SMALL, resid_pdrop=0.0, embd_pdrop=0.0),  # phi-1/2: lm_head with a bias
}
REFUSED = {"phi": r"PhiForCausalLM \(phi\): the output head has a bias"}
# The Ray step runs for the architectures whose wrapping or attention path differs (the rest share llama's).
RAY_ARCHITECTURES = ["llama", "opt", "gpt2", "gpt_neox", "falcon", "gemma2", "granite"]


def save_tiny(model_type: str, folder, tokenizer, seed: int = 0, **overrides):
    """A tiny random model of ``model_type`` with the embedded tokenizer's vocabulary, saved to ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **{**ARCHITECTURES.get(model_type, {}), **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # random init leaves some norms/biases at 0/1: perturb everything so bugs show
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def texts(bioasq_passages):
    return bioasq_passages[:2]


def examples_for(texts, tokenizer):
    return [e for t in texts for e in prepare_document(t, tokenizer, SplitConfig(seed=3), 2048)]


@pytest.mark.core
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_packed_loss_equals_reference_or_refused(model_type, tmp_path, tokenizer, texts):
    folder = save_tiny(model_type, tmp_path / model_type, tokenizer)
    if model_type in REFUSED:
        with pytest.raises(ModelCheckError, match=REFUSED[model_type]) as refused:
            check_model_source(str(folder))
        assert "\n" not in str(refused.value)
        return
    check = check_model_source(str(folder))
    assert check.head_rel_error < 1e-4 and check.isolation_rel_error < 1e-4, check.format()
    teacher, _ = load_model_and_tokenizer(str(folder))
    teacher.requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    assert_packed_loss_matches_reference(student, teacher, examples_for(texts, tokenizer), ObjectiveConfig(chunk_size=53))


# --------------------------------------------------------------------------- the probe catches what is wrong


@pytest.mark.core
def test_probe_refuses_a_transform_after_the_head(tmp_path, tokenizer):
    model, _ = load_model_and_tokenizer(str(save_tiny("llama", tmp_path / "m", tokenizer)))
    forward = model.forward

    def scaled_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        if out.logits is not None:
            out.logits = out.logits * 3.0
        return out

    model.forward = scaled_forward
    with pytest.raises(ModelCheckError, match=r"LlamaForCausalLM \(llama\): the chunked vocabulary projection does not reproduce"):
        check_model(model, tokenizer)


@pytest.mark.core
@pytest.mark.parametrize("model_type", ["granite", "cohere", "gemma3_text"])
def test_probe_refuses_the_head_without_its_known_transform(model_type, tmp_path, tokenizer, monkeypatch):
    """What happened before the check: the chunked head skipped granite's / cohere's scale (loss 63x off, exit 0)."""
    import disc_ray.model_check as model_check

    model, _ = load_model_and_tokenizer(str(save_tiny(model_type, tmp_path / "m", tokenizer)))
    if model_type == "gemma3_text":
        with torch.no_grad():  # logits large enough for the cap to matter, as in a trained Gemma
            model.get_output_embeddings().weight.mul_(400.0)
        monkeypatch.setattr(model_check, "final_logit_softcap", lambda model: None)
    else:
        monkeypatch.setattr(model_check, "logit_scale", lambda model: 1.0)
    with pytest.raises(ModelCheckError, match="the chunked vocabulary projection does not reproduce the model's own logits"):
        check_model(model, tokenizer)


@pytest.mark.core
def test_probe_refuses_attention_that_leaks_across_packed_splits(tmp_path, tokenizer, monkeypatch):
    model, _ = load_model_and_tokenizer(str(save_tiny("llama", tmp_path / "m", tokenizer)), attn_implementation="sdpa")
    # Forget that llama isolates splits by position ids, and hand it a mask that lets every token see every
    # earlier token of the row (what OPT does with restarting position ids): the probe must see the leak.
    import disc_ray.model_check as model_check

    monkeypatch.setattr(model_check, "POSITION_ID_PACKING", frozenset())
    monkeypatch.setattr(model_check, "block_causal_mask",
                        lambda position_ids, attn: torch.ones(position_ids.shape[-1], position_ids.shape[-1], dtype=torch.bool).tril()[None, None])
    with pytest.raises(ModelCheckError, match=r"a split in a packed row does not give the logits of the split alone"):
        check_model(model, tokenizer)


@pytest.mark.core
def test_opt_restarting_positions_leak_and_the_block_mask_isolates(tmp_path, tokenizer, monkeypatch):
    """The reason OPT under sdpa is packed with an explicit mask: without it, the probe refuses it. By default
    OPT loads with disc_packed_sdpa, which isolates the splits by their restarting positions."""
    import disc_ray.model_check as model_check

    folder = str(save_tiny("opt", tmp_path / "opt", tokenizer))
    model, _ = load_model_and_tokenizer(folder)
    assert model.config._attn_implementation == "disc_packed_sdpa" and packed_attention(model) == "position_ids"
    assert check_model(model, tokenizer).isolation_rel_error < 1e-5
    model, _ = load_model_and_tokenizer(folder, attn_implementation="sdpa")
    assert packed_attention(model) == "block_mask"
    assert check_model(model, tokenizer).isolation_rel_error < 1e-5
    model, _ = load_model_and_tokenizer(folder, attn_implementation="sdpa")
    monkeypatch.setattr(model_check, "POSITION_ID_PACKING", model_check.POSITION_ID_PACKING | {"opt"})
    with pytest.raises(ModelCheckError, match=r"OPTForCausalLM \(opt\): a split in a packed row"):
        check_model(model, tokenizer)


@pytest.mark.core
def test_gemma2_loads_with_eager_attention_and_softcap(tmp_path, tokenizer):
    model, _ = load_model_and_tokenizer(str(save_tiny("gemma2", tmp_path / "g", tokenizer)))
    assert model.config._attn_implementation == "eager"
    assert model.config.final_logit_softcapping
    assert check_model(model, tokenizer).head_rel_error < 1e-5


@pytest.mark.core
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_fsdp_wrapping_finds_every_decoder_block(model_type, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    from disc_ray.train import decoder_layers

    config = AutoConfig.for_model(model_type, vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, **dict(ARCHITECTURES[model_type], **{
        "num_hidden_layers" if model_type != "gpt2" else "n_layer": 3}))
    layers = decoder_layers(AutoModelForCausalLM.from_config(config))
    assert len(layers) == 3 and len({type(layer) for layer in layers}) == 1
    assert type(layers[0]).__name__.endswith(("DecoderLayer", "Block", "Layer"))


@pytest.mark.core
def test_log_likelihood_scoring_refuses_an_unsupported_model(tmp_path, tokenizer):
    from disc_ray.evaluation.backends import HFBackend

    model, _ = load_model_and_tokenizer(str(save_tiny("phi", tmp_path / "phi", tokenizer)))
    with pytest.raises(ModelCheckError, match=r"PhiForCausalLM \(phi\): the output head has a bias"):
        HFBackend(model, tokenizer, progress=False).loglikelihood([("Question: 2+2?", " 4")])


@pytest.mark.ray
def test_adapt_job_refuses_an_unsupported_model_on_the_driver(tmp_path, tokenizer):
    """Phi-2's biased output head cannot be applied by the chunked projection: `jobs/adapt.py` ends with one error line."""
    from test_jobs import run_job

    folder = save_tiny("phi", tmp_path / "phi", tokenizer)
    result = run_job("--model", str(folder), "--run.storage_path", str(tmp_path / "runs"), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: PhiForCausalLM (phi): the output head has a bias"), result.stderr[-2000:]
    assert not any((tmp_path / "runs").rglob("checkpoint_*"))  # nothing trained


# --------------------------------------------------------------------------- one real Ray Train step per wrapping


@pytest.mark.ray
@pytest.mark.parametrize("model_type", RAY_ARCHITECTURES)
def test_two_fsdp_workers_equal_one_process(model_type, local_ray, tmp_path, tokenizer, bioasq_passages):
    folder = save_tiny(model_type, tmp_path / model_type, tokenizer)
    assert_two_ranks_match_one_process(tmp_path, folder, tokenizer, bioasq_passages[:2], run_name="arch", batch_size=1, epochs=2)
