"""Export an adapted model as a Hugging Face directory (safetensors) plus a ``run.json`` manifest.

The directory loads with ``AutoModelForCausalLM.from_pretrained`` and vLLM: weights in safetensors,
config, generation config, tokenizer files and chat template. A LoRA-adapted model (the ``lora`` objective) is
exported MERGED, as a plain model of the base architecture (:func:`disc_ray.lora.merged_state_dict`).
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "ray", "disc-ray", "datasets", "pyarrow", "vllm"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The commit of the code that ran (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_manifest(output_dir: str | Path, info: dict) -> Path:
    manifest = dict(info, versions=package_versions(), git_commit=git_commit())
    path = Path(output_dir) / "run.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path


def export_model(model: torch.nn.Module, tokenizer, output_dir: str | Path, info: dict | None = None,
                 state_dict: dict | None = None) -> Path:
    """Save ``model`` (or ``state_dict`` into ``model``'s config) as safetensors + tokenizer + ``run.json``.

    ``state_dict`` is for distributed training, where rank 0 gathers the full weights into CPU memory. A PEFT LoRA
    model (or its gathered state dict) is saved with its adapters merged into the base weights: a plain model.
    """
    from disc_ray.lora import is_lora_model, merged_state_dict

    if is_lora_model(model):
        state_dict = merged_state_dict(model, state_dict)
        model = model.get_base_model()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(output_dir)
    write_run_manifest(output_dir, info or {})
    return output_dir
