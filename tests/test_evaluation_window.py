"""Log-likelihood scoring past the model's context window (MCQ log-likelihood and drift)."""

from __future__ import annotations

import pytest
import torch

from disc_ray.evaluation.backends import HFBackend
from disc_ray.evaluation.config import EvalInputError
from disc_ray.evaluation.drift import build_drift_batches, compute_drift
from disc_ray.evaluation.prompts import encode_pair
from disc_ray.models import load_model_and_tokenizer

from test_architectures import save_tiny

WINDOW = 24


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, tokenizer):
    folder = save_tiny("llama", tmp_path_factory.mktemp("short") / "model", tokenizer, max_position_embeddings=WINDOW)
    model, _ = load_model_and_tokenizer(str(folder))
    return model.eval()


def tokens(tokenizer, count: int, word: str = " river") -> str:
    """A text of exactly ``count`` tokens (one per repeated word)."""
    text = word * count
    assert len(tokenizer(text, add_special_tokens=False).input_ids) == count
    return text


def direct_loglikelihood(model, context_ids, continuation_ids) -> float:
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(context_ids) - 1 + i, t].item() for i, t in enumerate(continuation_ids))


@pytest.mark.core
def test_long_context_is_cut_from_the_left_and_the_option_scored_in_full(short_model, tokenizer):
    backend = HFBackend(short_model, tokenizer, progress=False)
    context = ("Question: which word comes next in this long sentence about the weather, the wind and the sea, "
               "as told by the old fisherman who lived by the harbour for fifty years?")
    for length in (WINDOW - 1, WINDOW - 5, 3):
        option = tokens(tokenizer, length)
        context_ids, option_ids = encode_pair(tokenizer, context, option)
        assert len(option_ids) == length and len(context_ids) + length > WINDOW
        (score,) = backend.loglikelihood([(context, option)])
        expected = direct_loglikelihood(short_model, context_ids[-(WINDOW - length):], option_ids)
        assert score < -1.0  # a random model never scores an option near the best possible 0.0
        assert score == pytest.approx(expected, rel=1e-5)


@pytest.mark.core
@pytest.mark.parametrize("length", [WINDOW, WINDOW + 9])
def test_an_option_that_does_not_fit_the_window_is_a_clear_error(short_model, tokenizer, length):
    backend = HFBackend(short_model, tokenizer, progress=False)
    with pytest.raises(EvalInputError, match=f"a continuation of {length} tokens does not fit the model's {WINDOW}-token"):
        backend.loglikelihood([("Question: pick one.", tokens(tokenizer, length))])


@pytest.mark.core
def test_drift_cuts_long_prompts_from_the_left_and_refuses_responses_that_do_not_fit(short_model, tokenizer):
    records = [{"prompt": "Tell me a long story about a river that runs to the sea past the old town.",
                "response": tokens(tokenizer, 10)}, {"prompt": "Hi", "response": tokens(tokenizer, 5, " sea")}]
    batches = build_drift_batches(tokenizer, records, window=WINDOW)
    for batch in batches:
        assert int(batch.position_ids.max()) < WINDOW
    assert sum(b.target_ids.numel() for b in batches) == 15  # every response token scored
    drift = compute_drift(short_model, short_model, batches)
    assert drift["drift_tokens"] == 15 and drift["drift_kl"] == pytest.approx(0.0, abs=1e-6)
    # the same NLL as scoring each truncated sequence directly
    expected = 0.0
    for record in records:
        context, response = encode_pair(tokenizer, [{"role": "user", "content": record["prompt"]}], record["response"])
        expected -= direct_loglikelihood(short_model, context[-(WINDOW - len(response)):], response)
    assert drift["drift_nll"] == pytest.approx(expected / 15, rel=1e-5)
    with pytest.raises(EvalInputError, match=f"does not fit the model's {WINDOW}-token context window"):
        build_drift_batches(tokenizer, [{"prompt": "Hi", "response": tokens(tokenizer, WINDOW)}], window=WINDOW)
