"""Memory-lean model set-up for data-parallel workers: build on the meta device, shard, then read each rank's slices.

The path of :func:`build_sharded_models` (``model.lean_loading``, the default):

1. the student (fp32 master weights) and the teacher (``model.teacher_dtype``) are built from the model's config
   with their parameters on the meta device (no memory) and their buffers real (``accelerate``'s
   ``init_empty_weights(include_buffers=False)``): non-persistent buffers such as the rotary ``inv_freq`` are
   computed exactly as a normal construction computes them;
2. both are sharded with FSDP2 (``fully_shard`` per decoder layer, then the root), then ``to_empty`` allocates
   only this rank's shards; the buffers are put back;
3. every rank reads only its rows of each parameter from the safetensors files (dim-0 rows are one contiguous
   byte range: read straight into the shard, or through a buffer of those rows when the file's dtype differs),
   cast to fp32, into its student shard; the teacher's shards are copies of the student's (cast to the teacher
   dtype): the same loaded weights, and no rank ever holds a full model or deep-copies one.

With ``n`` ranks a rank holds ``1/n`` of the fp32 student plus ``1/n`` of the teacher (fp32: 4 bytes a
parameter, bf16: 2) plus the one tensor being read. Tied weights (SmolLM2's ``lm_head`` is its
``embed_tokens``) stay one parameter: FSDP2 swaps DTensor parameters in place on ``to_empty``.

:func:`build_sharded_models_full_copy` is the earlier path (every rank loads the whole fp32 model with
``from_pretrained``, deep-copies it as the teacher, then shards both); it stays as the fallback for a model whose
weights are not plain safetensors matching the model's parameters (``.bin`` files, a hub id, weights that
transformers converts or renames on load, such as fused MoE experts or GPT-NeoX's ``embed_out``), and as the
reference the tests compare with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TEACHER_DTYPES = ("float32", "bfloat16")


@dataclass
class ShardedModels:
    """The set-up of one worker: the sharded student, the sharded frozen teacher (None for ``ft``), the tokenizer,
    and how the weights were loaded (``"lean"`` or ``"full_copy"``, with the reason for a fallback)."""

    student: torch.nn.Module
    teacher: torch.nn.Module | None
    tokenizer: object
    loading: str
    fallback_reason: str | None = None


def resolve_teacher_dtype(teacher_dtype: str | None, device: torch.device) -> torch.dtype:
    """``model.teacher_dtype`` as a torch dtype: ``None`` means bf16 on GPU (the paper's teacher) and fp32 on CPU."""
    if teacher_dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if teacher_dtype not in TEACHER_DTYPES:
        raise ValueError(f"model.teacher_dtype must be one of {TEACHER_DTYPES} or null, got {teacher_dtype!r}")
    return getattr(torch, teacher_dtype)


def safetensors_index(model_dir: str | Path) -> dict[str, Path] | None:
    """``{tensor name: file}`` for a folder of safetensors weights (one ``model.safetensors`` or an index with
    its shards); None when the folder has none (a hub id, ``.bin`` weights)."""
    folder = Path(model_dir)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        return None
    return {name: single for name in read_safetensors_header(single)[0]}


def checkpoint_shapes(index: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the safetensors files of ``index`` that lean loading can read (headers only)."""
    shapes = {}
    for file in sorted(set(index.values())):
        header, _ = read_safetensors_header(file)
        # a dtype lean loading cannot read (fp8, ...) counts as no match: the full-copy path takes the model
        shapes.update({name: tuple(entry["shape"]) for name, entry in header.items() if entry["dtype"] in SAFETENSORS_DTYPES})
    return shapes


def build_meta_model(config, dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool) -> torch.nn.Module:
    """A causal LM of ``config`` whose parameters are on the meta device (no memory) and whose buffers are real;
    tied parameters (``config.tie_word_embeddings``) are one parameter, as ``from_pretrained`` leaves them."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation,
                                                 trust_remote_code=trust_remote_code)
    # init_empty_weights re-registers every parameter as a new meta Parameter, which unties lm_head from
    # embed_tokens (SmolLM2, Qwen, Gemma tie them): tie again, outside the context.
    model.tie_weights()
    return model


def unmatched_weights(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Parameters and persistent buffers of ``model`` that the checkpoint lacks or holds with another shape
    (a tied parameter counts once, under its first name)."""
    persistent = set(model.state_dict().keys())
    wanted = dict(model.named_parameters())
    wanted.update({name: b for name, b in model.named_buffers() if name in persistent})
    return [name for name, tensor in wanted.items() if shapes.get(name) != tuple(tensor.shape)]


def materialize_sharded(model: torch.nn.Module, device: torch.device) -> None:
    """Allocate this rank's shards of a sharded meta model on ``device`` (``to_empty``), keeping its buffers."""
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])


def local_rows(param: torch.Tensor) -> tuple[int, int]:
    """``(first_row, num_rows)`` of dim 0 that this rank holds of an FSDP2 (``Shard(0)``) parameter; the whole
    tensor for a plain one."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return 0, param.shape[0] if param.ndim else 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local_shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return (offset[0], local_shape[0]) if param.ndim else (0, 0)


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def read_safetensors_header(file: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file (``{name: {"dtype", "shape", "data_offsets"}}``) and the byte offset
    where its data starts."""
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def read_rows_into(f, entry: dict, data_start: int, first: int, out: torch.Tensor) -> None:
    """Read rows ``first .. first + len(out)`` (dim 0) of one safetensors tensor into ``out``, cast to its dtype.

    Dim-0 rows of a row-major tensor are one contiguous byte range: a single ``readinto`` straight into ``out``
    when the dtypes match, else into a buffer of those rows only. Nothing is memory-mapped, so the file's pages
    never count in the process's RSS."""
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"safetensors dtype {entry['dtype']} is not supported by lean loading")
    shape = entry["shape"]
    row_bytes = (torch.Size(shape[1:]).numel() if len(shape) > 1 else 1) * torch.empty((), dtype=dtype).element_size()
    target = out if out.dtype == dtype and out.is_contiguous() and out.device.type == "cpu" else torch.empty(out.shape, dtype=dtype)
    f.seek(data_start + entry["data_offsets"][0] + first * row_bytes)
    view = memoryview(target.reshape(-1).view(torch.uint8).numpy())  # the rows' bytes, written in place
    if f.readinto(view) != len(view):
        raise ValueError(f"safetensors file {f.name} ended early")
    if target is not out:
        out.copy_(target)


@torch.no_grad()
def load_local_shards(model: torch.nn.Module, index: dict[str, Path]) -> None:
    """Read this rank's rows of every parameter (and persistent buffer) of a sharded ``model`` from the safetensors
    files of ``index`` (``{tensor name: file}``), cast to each tensor's dtype. Peak extra memory: nothing when the
    file's dtype is the model's, else one rank's rows of one tensor. Raises KeyError for a name the files lack."""
    from torch.distributed.tensor import DTensor

    by_file: dict[Path, list[tuple[str, torch.Tensor]]] = {}
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in index]
    for name, tensor in tensors:
        by_file.setdefault(index[name], []).append((name, tensor))
    for file, named in by_file.items():
        header, data_start = read_safetensors_header(file)
        with open(file, "rb", buffering=0) as f:
            for name, tensor in named:
                local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
                first, rows = local_rows(tensor)
                if tensor.ndim == 0 or rows:
                    read_rows_into(f, header[name], data_start, first if tensor.ndim else 0, local)


@torch.no_grad()
def copy_local_shards(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy (and cast) ``source``'s local shards into ``target``'s, both sharded alike: the teacher from the student."""
    from torch.distributed.tensor import DTensor

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    targets = dict(target.named_parameters())
    for name, param in source.named_parameters():
        local(targets[name]).copy_(local(param))


@torch.no_grad()
def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast the parameters only: buffers (rotary ``inv_freq``) stay fp32, as ``from_pretrained(dtype=...)`` keeps
    them (``Module.to(dtype)`` would round them to bf16 and move every position's rotation)."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def prepare_student(student: torch.nn.Module, activation_checkpointing: bool) -> None:
    if activation_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def freeze_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def build_sharded_models(model_dir: str, *, needs_teacher: bool, teacher_dtype: torch.dtype, device: torch.device,
                         mixed_precision: bool, activation_checkpointing: bool = False, trust_remote_code: bool = False,
                         lean: bool = True, with_tokenizer: bool = True, compile_blocks: bool = False,
                         wrap_student=None) -> ShardedModels:
    """Student (fp32) and frozen teacher (``teacher_dtype``), both FSDP2-sharded over the default process group.

    A collective (``fully_shard``): every rank calls it. ``model_dir``: a local Hugging Face folder (or hub id: then
    the full-copy path). ``lean=False`` or weights that do not match the model's parameters one to one take
    :func:`build_sharded_models_full_copy`; :attr:`ShardedModels.fallback_reason` says why.
    The student is left in eval mode, as ``from_pretrained`` leaves it (the full-copy path's behaviour).
    ``with_tokenizer=False`` leaves :attr:`ShardedModels.tokenizer` None on the lean path (ranks that never export:
    a fast tokenizer holds ~100 MB). ``compile_blocks``: ``torch.compile`` each decoder block of both models
    (:func:`compile_decoder_blocks`). ``wrap_student``: a function applied to the loaded student before sharding
    (LoRA adapters, :func:`disc_ray.lora.wrap_student_for_objective`); it needs real weights, so it takes the
    full-copy path."""
    from transformers import AutoConfig

    from disc_ray.models import choose_attn_implementation, load_tokenizer

    full_copy = dict(needs_teacher=needs_teacher, teacher_dtype=teacher_dtype, device=device, mixed_precision=mixed_precision,
                     activation_checkpointing=activation_checkpointing, trust_remote_code=trust_remote_code,
                     compile_blocks=compile_blocks, wrap_student=wrap_student)
    index = safetensors_index(model_dir) if Path(model_dir).is_dir() else None
    if not lean or index is None or wrap_student is not None:
        reason = ("model.lean_loading is off" if not lean else f"{model_dir} has no safetensors weights" if index is None
                  else "the student is wrapped (LoRA adapters) on its loaded weights")
        return build_sharded_models_full_copy(model_dir, fallback_reason=reason, **full_copy)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code) if with_tokenizer else None
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    attn = choose_attn_implementation(config, trust_remote_code=trust_remote_code)
    student = build_meta_model(config, torch.float32, attn, trust_remote_code)
    unmatched = unmatched_weights(student, checkpoint_shapes(index))
    if unmatched:
        reason = f"the checkpoint does not match the model's parameters one to one ({unmatched[:3]})"
        return build_sharded_models_full_copy(model_dir, fallback_reason=reason, **full_copy)
    student.eval()
    prepare_student(student, activation_checkpointing)
    if compile_blocks:
        compile_decoder_blocks(student)
    shard_student(student, mixed_precision)
    materialize_sharded(student, device)
    load_local_shards(student, index)
    teacher = None
    if needs_teacher:
        teacher = freeze_teacher(build_meta_model(config, teacher_dtype, attn, trust_remote_code))
        if compile_blocks:
            compile_decoder_blocks(teacher)
        shard_model(teacher, mixed_precision=mixed_precision)
        materialize_sharded(teacher, device)
        copy_local_shards(student, teacher)
    return ShardedModels(student=student, teacher=teacher, tokenizer=tokenizer, loading="lean")


def build_sharded_models_full_copy(model_dir: str, *, needs_teacher: bool, teacher_dtype: torch.dtype, device: torch.device,
                                   mixed_precision: bool, activation_checkpointing: bool = False,
                                   trust_remote_code: bool = False, fallback_reason: str | None = None,
                                   compile_blocks: bool = False, wrap_student=None) -> ShardedModels:
    """The earlier set-up: the whole fp32 model on every rank, a deep copy as the teacher (cast to ``teacher_dtype``),
    then both sharded. Peak host memory per rank: about two fp32 models."""
    from disc_ray.loop import build_teacher
    from disc_ray.models import load_model_and_tokenizer

    student, tokenizer = load_model_and_tokenizer(model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    teacher = cast_parameters(build_teacher(student), teacher_dtype) if needs_teacher else None
    if wrap_student is not None:
        student = wrap_student(student)
    prepare_student(student, activation_checkpointing)
    for model in (student, teacher) if compile_blocks else ():
        if model is not None:
            compile_decoder_blocks(model)
    student.to(device)
    shard_student(student, mixed_precision)
    if teacher is not None:
        teacher.to(device)
        shard_model(teacher, mixed_precision=mixed_precision)
    return ShardedModels(student=student, teacher=teacher, tokenizer=tokenizer, loading="full_copy",
                         fallback_reason=fallback_reason)


# --------------------------------------------------------------------------- FSDP2


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM, whatever the architecture puts them under.

    The ``nn.ModuleList`` whose blocks' class is one of ``model._no_split_modules`` (``model.layers`` for
    Llama/Qwen/Gemma, ``model.decoder.layers`` for OPT, ``transformer.h`` for GPT-2/Falcon,
    ``gpt_neox.layers``), else the longest ``ModuleList`` of blocks of one class. Raises ``ValueError``
    when the model has none."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    candidates = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
                  and len({type(block) for block in m}) == 1]
    named = [m for m in candidates if type(m[0]).__name__ in no_split]
    if named or candidates:
        return list(max(named or candidates, key=len))
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")


def shard_model(model: torch.nn.Module, *, mixed_precision: bool, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2 as torchtitan does it: each decoder layer is a unit, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=mp_policy)
    return model


def all_fsdp_modules(model: torch.nn.Module):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def compile_decoder_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` every decoder block in place (``Module.compile``), before sharding, as torchtitan does: the
    blocks keep their identity, so FSDP2 wraps the compiled blocks. Packed rows change length every step:
    ``dynamic=True`` avoids a recompilation per length."""
    for layer in decoder_layers(model):
        layer.compile(dynamic=True)
    return model


def shard_student(student: torch.nn.Module, mixed_precision: bool) -> torch.nn.Module:
    """:func:`shard_model`, with FSDP's gradient division off (the loss is already divided by the global count) and
    plain SUM reductions (gloo has no PREMUL_SUM)."""
    shard_model(student, mixed_precision=mixed_precision)
    for module in all_fsdp_modules(student):
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    return student
