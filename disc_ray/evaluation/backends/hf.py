"""``hf``: transformers on CPU or GPU; left-padded batched ``generate``; log-likelihoods from hidden states
projected in row chunks (no ``[batch, seq, vocab]`` logits)."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from disc_ray.evaluation.backends.base import GenerationStats, _progress, decode_completion, resolve_device, resolve_dtype, stop_token_ids
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.prompts import Prompt, context_window, encode_pair, encode_prompt, fit_pair_to_window
from disc_ray.models import sdpa_without_cudnn


class HFBackend:
    """transformers on CPU or GPU. Prompts are sorted by length and generated in left-padded batches.

    Sampling is seeded per batch (``seed + batch_index``), so results are reproducible for a given
    prompt list and batch size; greedy results do not depend on the batch size.
    """

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 8, progress: bool = True, source: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.source = source
        self.stats = GenerationStats()
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
             progress: bool = True, cache_dir: str | None = None) -> "HFBackend":
        from disc_ray.models import load_model_and_tokenizer

        check_tokenizer_files(name_or_path)
        device = resolve_device(device)
        model, tokenizer = load_model_and_tokenizer(name_or_path, dtype=resolve_dtype(dtype, device), device=device,
                                                    cache_dir=cache_dir)
        return cls(model, tokenizer, batch_size=batch_size, progress=progress, source=name_or_path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _max_prompt_tokens(self, max_new_tokens: int) -> int:
        limit = getattr(self.model.config, "max_position_embeddings", None) or 1_000_000
        return max(limit - max_new_tokens, 1)

    def _left_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq):] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, desc: str | None = None, top_p: float = 1.0) -> list[list[str]]:
        from transformers import GenerationConfig

        keep = self._max_prompt_tokens(max_new_tokens)
        encoded = [encode_prompt(self.tokenizer, p)[-keep:] for p in prompts]
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=n,
            pad_token_id=self.pad_id, eos_token_id=self.stop_ids,
            **(dict(temperature=temperature, top_k=0, top_p=top_p) if sampling else {}),
        )
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[list[str] | None] = [None] * len(encoded)
        started = time.perf_counter()
        with _progress(len(encoded), desc, self.progress) as bar:
            for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
                rows = order[start : start + self.batch_size]
                input_ids, attention_mask = self._left_pad([encoded[i] for i in rows])
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed + batch_index)
                    with sdpa_without_cudnn():
                        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
                new_tokens = output[:, input_ids.shape[1]:].tolist()
                for j, i in enumerate(rows):
                    decoded = [decode_completion(self.tokenizer, new_tokens[j * n + k], self.stop_ids) for k in range(n)]
                    results[i] = [text for text, _ in decoded]
                    self.stats.generated_tokens += sum(length for _, length in decoded)
                bar.update(len(rows))
        self.stats.prompts += len(encoded)
        self.stats.sequences += len(encoded) * n
        self.stats.seconds += time.perf_counter() - started
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        """Contexts longer than the model's window lose tokens from the left; a continuation that does not fit
        with one context token raises :class:`EvalInputError`. The model is probed first
        (:func:`disc_ray.model_check.check_model`): a :class:`ModelCheckError` if its scores would not be exact."""
        from disc_ray.model_check import check_model
        from disc_ray.objectives import chunked_linear_divergence, output_head

        check_model(self.model, self.tokenizer)
        window = context_window(self.model)
        encoded = [fit_pair_to_window(*encode_pair(self.tokenizer, context, continuation), window) for context, continuation in pairs]
        encoded = [(ctx + cont, len(cont)) for ctx, cont in encoded]
        head = output_head(self.model)
        weight = head.weight.detach()
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        results = [0.0] * len(encoded)
        no_logits = torch.zeros(0, dtype=torch.long, device=self.device)
        with _progress(len(encoded), desc, self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(encoded[i][0]) for i in rows)
                input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):  # right padding: real tokens keep positions 0..L-1
                    input_ids[r, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
                    attention_mask[r, : len(encoded[i][0])] = 1
                with sdpa_without_cudnn():
                    out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                     use_cache=False, output_hidden_states=True, logits_to_keep=no_logits)
                hidden = out.hidden_states[-1]
                for r, i in enumerate(rows):
                    ids, cont_len = encoded[i]
                    if cont_len == 0:
                        continue
                    first = len(ids) - cont_len  # position first - 1 predicts token `first`
                    rows_hidden = hidden[r, first - 1 : len(ids) - 1]
                    targets = torch.tensor(ids[first:], dtype=torch.long, device=self.device)
                    _, stats = chunked_linear_divergence(rows_hidden, weight, None, None, targets,
                                                         torch.ones(cont_len, device=self.device),
                                                         ce_scale=1.0, kl_scale=0.0, softcap=head.softcap,
                                                         logit_scale=head.logit_scale)
                    results[i] = -float(stats[0])
                bar.update(len(rows))
        return results

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
