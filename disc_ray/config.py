"""Typed configs: nested frozen dataclasses, loaded from YAML with ``--section.key value`` overrides.

Everything is validated on the driver before any worker starts: an unknown key, a wrong type or an
invalid value raises :class:`ConfigError` whose message names the key (``train.lr``).

    cfg = load_config(AdaptConfig, "configs/cpu.yaml", ["--train.lr", "1e-5", "--objective.name=ft"])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid config; the message names the offending key."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``annotation``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in options):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_type, value_type = typing.get_args(annotation) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        shorthand = getattr(annotation, "SHORTHAND_FIELD", None)
        if shorthand and isinstance(value, str):  # --model X means --model.name_or_path X
            value = {shorthand: value}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return build_dataclass(annotation, value, key)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def unknown_key_error(full: str, key: str, names: list[str], prefix: str, what: str = "") -> ConfigError:
    """``unknown config key 'train.lrr' (did you mean 'train.lr'?); valid keys here: ...`` (``what``: a prefix such as ``space: ``)."""
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
    return ConfigError(f"{what}unknown config key '{full}'{hint}; valid keys here: {', '.join(names)}")


def field_type(cls, key: str, what: str = ""):
    """The annotation of a dotted leaf key of config dataclass ``cls`` (``train.lr`` -> float).

    Raises ConfigError (with a did-you-mean) for an unknown key, a key under a leaf, or a whole section."""
    parts, prefix = key.split("."), ""
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{what}'{key}' is not a config key ('{prefix}' has no sub-keys)")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if part not in names:
            raise unknown_key_error(key, part, names, prefix, what)
        prefix = f"{prefix}.{part}" if prefix else part
        cls = _field_types(cls)[part]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{what}'{key}' is a config section; use one of its keys ({key}.<key>)")
    return cls


def build_dataclass(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (nested) dict, rejecting unknown keys and running ``__post_init__`` validation."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise unknown_key_error(full, key, names, prefix)
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        message = str(err)
        raise ConfigError(message if prefix == "" or message.startswith(prefix) else f"{prefix}: {message}") from None


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.lr", "1e-5", "--model=x"]`` -> ``{"train": {"lr": "1e-5"}, "model": "x"}`` (strings; coerced later)."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected an override like --section.key VALUE, got {arg!r}")
        if "=" in arg:
            dotted, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                raise ConfigError(f"override {arg} has no value")
            dotted, value = arg[2:], args[i + 1]
            i += 2
        target = nested
        parts = dotted.replace("-", "_").split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override --{dotted} conflicts with an earlier override")
        target[parts[-1]] = value
    return nested


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def apply_dotted(values: dict, updates: dict) -> dict:
    """A deep copy of nested ``values`` with nested or ``{"train.lr": 1e-5}``-style dotted ``updates`` applied."""
    merged = copy.deepcopy(values)
    for dotted, value in updates.items():
        if isinstance(value, dict) and "." not in dotted and isinstance(merged.get(dotted), dict):
            merged[dotted] = apply_dotted(merged[dotted], value)
            continue
        target = merged
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    return merged


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping; ConfigError (one line, naming ``what`` and the path) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return loaded


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, *,
                sections: tuple[str, ...] | None = None, preset: dict[str, Any] | None = None) -> T:
    """YAML file (optional) + CLI overrides -> a validated ``cls`` instance: the one loader every entry point uses.

    ``sections``: read only these top-level sections of the file (a main-job config or a sweep file holds others
    the command does not take); ``preset``: dotted values applied after the file and before the overrides (a
    positional argument, e.g. ``{"data.path": corpus}``). Raises ConfigError (one line, naming the key)."""
    values = read_yaml_mapping(path) if path else {}
    if sections is not None:
        values = {key: value for key, value in values.items() if key in sections}
    if preset:
        values = apply_dotted(values, preset)
    return build_dataclass(cls, apply_dotted(values, parse_overrides(overrides or [])))


def _attribute_docstrings(cls) -> dict[str, str]:
    """The string literal written under each field of a dataclass (``x: int = 1`` then ``\"\"\"doc\"\"\"``)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def describe_config(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every key of a config dataclass, nested sections flattened: ``(dotted key, type, default, docstring)``."""
    rows = []
    types_, docs, default = _field_types(cls), _attribute_docstrings(cls), cls()
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        annotation, value = types_[field.name], getattr(default, field.name)
        if dataclasses.is_dataclass(annotation):
            rows += describe_config(annotation, f"{prefix}{field.name}.")
            continue
        type_name = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
        rows.append((f"{prefix}{field.name}", type_name or str(annotation).replace("typing.", ""), repr(value),
                     docs.get(field.name, "")))
    return rows


def format_config_help(cls) -> str:
    """``--help`` text listing every key of ``cls`` with its type, default and docstring, one section per block."""
    lines, section = ["config keys (--section.key VALUE or --section.key=VALUE; a YAML file with --config):"], None
    for key, type_name, default, doc in describe_config(cls):
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"\n  {section or 'top level'}:")
        lines.append(f"    --{key} {type_name} (default {default})" + (f"\n        {doc}" if doc else ""))
    return "\n".join(lines)


def dump_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------- stage configs


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to adapt (it is also the frozen teacher)."""

    SHORTHAND_FIELD: typing.ClassVar[str] = "name_or_path"

    name_or_path: str = "smollm2-135m-instruct"
    """The embedded default, a local Hugging Face directory, a ``.gguf`` file, or a hub id."""
    dtype: str = "float32"
    """Weights' dtype on load; with ``train.mixed_precision`` on GPU the master weights stay fp32."""
    teacher_dtype: str | None = None
    """The frozen teacher's weights: ``bfloat16`` (half the memory; the paper's teacher) or ``float32`` (exactly
    the student's initial weights). Default (null): ``bfloat16`` on GPU, ``float32`` on CPU."""
    lean_loading: bool = True
    """Build student and teacher on the meta device, shard them, then read each rank's slices of the safetensors
    (no rank holds a whole model). Off, or for weights that are not safetensors matching the model's parameters
    one to one: every worker loads the whole fp32 model and deep-copies it as the teacher before sharding."""
    trust_remote_code: bool = False
    cache_dir: str | None = None
    """Where converted models are cached (default: ``$DISC_RAY_CACHE`` or ``~/.cache/disc-ray``)."""

    def __post_init__(self):
        if not self.name_or_path:
            raise ValueError("model.name_or_path must not be empty")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.teacher_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"model.teacher_dtype must be float32, bfloat16 or null (bf16 on GPU, fp32 on CPU), got {self.teacher_dtype!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer and loop settings (paper defaults: AdamW, constant LR, weight decay 0.01, one epoch)."""

    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"
    """``constant`` (paper), ``cosine`` or ``linear`` decay after ``warmup_steps``."""
    warmup_steps: int = 0
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 turns clipping off (paper)."""
    batch_size: int = 1
    """Documents per micro-batch (per worker under Ray)."""
    grad_accum_steps: int = 1
    max_tokens_per_step: int = 0
    """Token-budget steps (0: off, steps of ``batch_size`` documents): each worker packs consecutive documents
    into a micro-batch until its student row would pass ``max_tokens_per_step / grad_accum_steps`` tokens (a longer
    document alone), so steps are full however long documents are; ``batch_size`` is then ignored. The loss is
    still the per-document mean over the step's global document count."""
    compile: bool = False
    """``torch.compile`` each decoder block of the student and the teacher (before FSDP2 sharding). Off by
    default: compiling takes minutes on CPU and is not yet measured on GPU."""
    epochs: int = 1
    max_steps: int = -1
    """Stop after this many optimizer steps; -1: run the epochs."""
    seed: int = 0
    log_every_n_steps: int = 1

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"train.lr_schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        for name in ("batch_size", "grad_accum_steps", "epochs", "log_every_n_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens_per_step < 0 or 0 < self.max_tokens_per_step < self.grad_accum_steps:
            raise ValueError(f"train.max_tokens_per_step must be 0 (off) or >= train.grad_accum_steps, got {self.max_tokens_per_step}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise ValueError("train.warmup_steps and train.max_grad_norm must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"train.max_steps must be -1 (run the epochs) or >= 1, got {self.max_steps}")


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """The Ray Train worker group."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    custom_resources: dict[str, float] = dataclasses.field(default_factory=dict)
    """Extra Ray resources each worker needs, e.g. ``{"train_group": 1}`` to land on a node group."""
    mixed_precision: bool = True
    """On GPU: bf16 compute with fp32 master weights (FSDP2 MixedPrecisionPolicy). Ignored on CPU."""
    activation_checkpointing: bool = False

    def __post_init__(self):
        if self.num_workers < 1:
            raise ValueError(f"workers.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise ValueError("workers.cpus_per_worker and workers.gpus_per_worker must be >= 0")

    def resources_per_worker(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker, **self.custom_resources}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return resources


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where the run lives: checkpoints and metrics under ``storage_path/name``, the exported model in ``output_dir``."""

    name: str = "disc-adapt"
    """Run name; launching again with the same name resumes from its last checkpoint."""
    storage_path: str = "~/disc-ray-runs"
    """Local folder or cloud URI (``s3://bucket/runs``) shared by all nodes."""
    output_dir: str | None = None
    """Where the exported Hugging Face model is copied (default: ``<storage_path>/<name>/model``)."""
    checkpoint_every_n_steps: int = 50
    num_checkpoints_to_keep: int = 2
    max_failures: int = 0
    """Worker-group restarts Ray Train may do after a failure (each resumes from the last checkpoint)."""
    ray_address: str | None = None
    """Cluster to connect to; default: $RAY_ADDRESS (set by ``ray job submit``) or a new local cluster."""
    dashboard_host: str = "127.0.0.1"
    """Interface a local cluster's dashboard listens on; only change it behind a firewall or tunnel."""

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty name without '/', got {self.name!r}")
        if self.checkpoint_every_n_steps < 1 or self.num_checkpoints_to_keep < 1:
            raise ValueError("run.checkpoint_every_n_steps and run.num_checkpoints_to_keep must be >= 1")
        if self.max_failures < -1:
            raise ValueError(f"run.max_failures must be >= -1 (-1: unlimited), got {self.max_failures}")

    def resolved_storage_path(self) -> str:
        return self.storage_path if "://" in self.storage_path else str(Path(self.storage_path).expanduser().resolve())

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return str(Path(self.output_dir).expanduser().resolve())
        if "://" in self.storage_path:
            raise ValueError("run.output_dir must be set to a local folder when run.storage_path is a cloud URI")
        return str(Path(self.resolved_storage_path()) / self.name / "model")




from disc_ray.data import DataConfig  # noqa: E402  (configs live next to their modules; no Ray import)
from disc_ray.objectives import ObjectiveConfig  # noqa: E402
from disc_ray.splits import SplitConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """Everything ``jobs/adapt.py`` takes: one YAML file, overridable as ``--section.key value``."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    workers: WorkersConfig = dataclasses.field(default_factory=WorkersConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
