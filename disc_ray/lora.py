"""The ``lora`` baseline: ``ft``'s cross-entropy through PEFT LoRA adapters on a frozen base, merged at export.

As the DiSC paper's released code builds it (``apply_lora`` in ``src/disc/models.py`` of
github.com/shankarp8/distillation-retains-capabilities, commit 591331d251880789f943a313101d857e9b3da9ee):
``LoraConfig(task_type=CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear",
bias="none")`` (``all-linear``: every linear layer except the output head), base weights frozen, the model in
train mode (so the adapters' dropout acts), and the checkpoint saved MERGED (``merge_and_unload``) so evaluation
loads a plain model. disc-ray reads the settings from ``objective.lora_rank`` / ``lora_alpha`` / ``lora_dropout``
/ ``lora_target_modules``.

Under FSDP2 the adapters are wrapped before sharding (each decoder layer, then the root, as for any student; the
frozen base parameters and the trainable adapters share the layer's FSDP unit) and only the adapters are in the
optimizer. The export merges from the gathered full state dict (:func:`merged_state_dict`), on rank 0, without
touching the sharded model: ``W + scaling * B @ A`` per adapted layer, with PEFT's own per-layer ``scaling``
(``alpha / r``) and ``fan_in_fan_out`` (GPT-2's Conv1D), and the keys of the plain model.
"""

from __future__ import annotations

import sys

import torch

from disc_ray.objectives import ObjectiveConfig

PEFT_PREFIX = "base_model.model."


def is_lora_model(model) -> bool:
    """Whether ``model`` is a PEFT model (without importing peft when nothing has: then it cannot be one)."""
    if "peft" not in sys.modules:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def apply_lora(model: torch.nn.Module, cfg: ObjectiveConfig, seed: int = 0) -> torch.nn.Module:
    """Wrap ``model`` (a Hugging Face causal LM, full weights, before any sharding) with LoRA adapters per ``cfg``;
    returns the ``PeftModelForCausalLM`` (the base layers are modified in place), base frozen, in train mode.

    The adapters' random init (A: PEFT's Kaiming-uniform; B: zeros) is drawn from a generator seeded with ``seed``
    alone, so every FSDP2 rank starts from the same adapters and a 2-rank run from the same ones as one process,
    whatever random numbers model loading consumed before. Raises ValueError when ``lora_target_modules`` matches no
    layer (PEFT's message)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = cfg.lora_target_modules.strip()
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, target_modules=target_modules, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, config)
    wrapped.train()  # from_pretrained returns eval mode, which would silently turn the adapters' dropout off
    return wrapped


def wrap_student_for_objective(model: torch.nn.Module, cfg: ObjectiveConfig, seed: int = 0) -> torch.nn.Module:
    """The model to train for ``cfg``: LoRA-wrapped for ``lora`` (adapters seeded with ``seed``), ``model`` itself for
    every other objective."""
    return apply_lora(model, cfg, seed) if cfg.name == "lora" else model


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``{"trainable_parameters", "total_parameters"}`` of ``model`` (global sizes, also for FSDP2 DTensor shards)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": int(trainable), "total_parameters": int(sum(p.numel() for p in model.parameters()))}


def merged_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every LoRA adapter of ``model`` (a PeftModel) merged into its base weight.

    ``state_dict``: the PeftModel's FULL state dict (keys ``base_model.model.<...>.base_layer.weight``,
    ``...lora_A.<adapter>.weight`` ``[r, in]``, ``...lora_B.<adapter>.weight`` ``[out, r]``), e.g. gathered from FSDP2
    shards onto rank 0's CPU; default ``model.state_dict()``. ``model`` supplies each layer's adapters, ``scaling``
    and ``fan_in_fan_out`` (its parameters may be sharded: they are not read). Merged in fp32, cast back to the base
    weight's dtype. Returns new tensors under the base model's keys (``model.layers.0.self_attn.q_proj.weight``);
    ``state_dict`` is not modified. Raises ValueError for an adapter kind this merge does not handle (DoRA, LoRA on
    embeddings or convolutions) or a missing key."""
    from peft.tuners.lora import LoraLayer

    state = dict(model.state_dict() if state_dict is None else state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base_key = f"{name}.base_layer.weight"
        for adapter in module.active_adapters:
            if getattr(module, "use_dora", {}).get(adapter) or adapter in getattr(module, "lora_embedding_A", {}):
                raise ValueError(f"{name}: merging DoRA or embedding adapters at export is not supported")
            keys = (base_key, f"{name}.lora_A.{adapter}.weight", f"{name}.lora_B.{adapter}.weight")
            missing = [k for k in keys if k not in state]
            if missing:
                raise ValueError(f"merged_state_dict: the state dict lacks {missing}")
            base, lora_a, lora_b = (state[k] for k in keys)
            if lora_a.ndim != 2:
                raise ValueError(f"{name}: only linear LoRA layers can be merged at export, got lora_A of shape {tuple(lora_a.shape)}")
            delta = (lora_b.float() @ lora_a.float()) * module.scaling[adapter]
            state[base_key] = (base.float() + (delta.t() if module.fan_in_fan_out else delta)).to(base.dtype)
    merged = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        plain = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        merged[plain.replace(".base_layer.", ".")] = value
    return merged
