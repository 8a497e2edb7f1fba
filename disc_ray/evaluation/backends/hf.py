"""``hf``: transformers on CPU or GPU; left-padded batched ``generate``; log-likelihoods from hidden states
projected in row chunks (no ``[batch, seq, vocab]`` logits)."""

from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch

from disc_ray.evaluation.backends.base import GenerationStats, _progress, decode_completion, encode_pairs, encode_prompts
from disc_ray.evaluation.backends.settings import (hf_generation_kwargs, resolve_backend_settings, resolve_device,
                                                   resolve_dtype_name)
from disc_ray.evaluation.data import check_tokenizer_files
from disc_ray.evaluation.prompts import Prompt, context_window
from disc_ray.models import sdpa_without_cudnn


class HFBackend:
    """transformers on CPU or GPU. Prompts are sorted by length and generated in left-padded batches.

    Sampling is seeded per batch (``seed + batch_index``), so results are reproducible for a given
    prompt list and batch size; greedy results do not depend on the batch size. Decoding and the window come
    from :mod:`.settings` (``decoding``: ``top_p`` / ``top_k`` / ``repetition_penalty`` / ``max_model_len``
    overrides, None: the model's); nothing else of the model's ``generation_config`` is applied.
    """

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 8, progress: bool = True, source: str | None = None,
                 **decoding):
        from transformers import GenerationConfig

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.source = source
        self.stats = GenerationStats()
        self.settings = resolve_backend_settings(
            "hf", tokenizer, getattr(model, "generation_config", None), model_window=context_window(model),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."), **decoding)
        self.stop_ids = list(self.settings.stop_token_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self._empty_generation_config = GenerationConfig()  # what generate() may fill unset fields from: nothing

    @classmethod
    def load(cls, name_or_path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
             progress: bool = True, cache_dir: str | None = None, **decoding) -> "HFBackend":
        from disc_ray.models import load_model_and_tokenizer

        check_tokenizer_files(name_or_path)
        device = resolve_device(device)
        dtype_name = resolve_dtype_name(dtype, on_cuda=device.startswith("cuda"))
        model, tokenizer = load_model_and_tokenizer(name_or_path, dtype=getattr(torch, dtype_name), device=device,
                                                    cache_dir=cache_dir)
        return cls(model, tokenizer, batch_size=batch_size, progress=progress, source=name_or_path, **decoding)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
                 seed: int = 0, desc: str | None = None, top_p: float | None = None) -> list[list[str]]:
        from transformers import GenerationConfig

        decoding = self.settings.for_call(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)
        encoded = encode_prompts(self.tokenizer, prompts, self.settings, max_new_tokens, self.stats)
        config = GenerationConfig(**hf_generation_kwargs(decoding, self.pad_id))
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[list[str] | None] = [None] * len(encoded)
        started = time.perf_counter()
        with _progress(len(encoded), desc, self.progress) as bar:
            for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
                rows = order[start : start + self.batch_size]
                input_ids, attention_mask = self._left_pad([encoded[i] for i in rows])
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(seed + batch_index)
                    with sdpa_without_cudnn(), self._only_shared_settings():
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

    @contextlib.contextmanager
    def _only_shared_settings(self):
        """transformers fills every field ``config`` leaves unset from ``model.generation_config``; swap in an empty
        one for the call so only the shared settings apply (as on vLLM)."""
        stored = self.model.generation_config
        self.model.generation_config = self._empty_generation_config
        try:
            yield
        finally:
            self.model.generation_config = stored

    @torch.no_grad()
    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]], *, desc: str | None = None) -> list[float]:
        """Contexts longer than the evaluation window lose tokens from the left (counted); a continuation that does not fit
        with one context token raises :class:`EvalInputError`. The model is probed first
        (:func:`disc_ray.model_check.check_model`): a :class:`ModelCheckError` if its scores would not be exact."""
        from disc_ray.model_check import check_model
        from disc_ray.objectives import chunked_linear_divergence, output_head

        check_model(self.model, self.tokenizer)
        encoded = [(ctx + cont, len(cont)) for ctx, cont in encode_pairs(self.tokenizer, pairs, self.settings, self.stats)]
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
