"""The one config loader: YAML + --section.key overrides, every key documented in --help."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from disc_ray.config import AdaptConfig, ConfigError, apply_dotted, describe_config, field_type, format_config_help, load_config

REPO = Path(__file__).resolve().parents[1]


def leaf_keys(cls, prefix=""):
    """Every dotted leaf key of a config dataclass, walked independently of describe_config."""
    keys = []
    for f in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[f.name]
        keys += leaf_keys(annotation, f"{prefix}{f.name}.") if dataclasses.is_dataclass(annotation) else [prefix + f.name]
    return keys


def test_help_lists_every_key_with_its_default_and_docstring():
    text = format_config_help(AdaptConfig)
    for key in leaf_keys(AdaptConfig):
        assert f"--{key} " in text, key
    assert "--train.lr float (default 1e-05)" in text
    assert "``constant`` (paper), ``cosine`` or ``linear`` decay after ``warmup_steps``." in text  # TrainConfig.lr_schedule
    assert [row[0] for row in describe_config(AdaptConfig)] == leaf_keys(AdaptConfig)


@pytest.mark.ray
def test_adapt_help_shows_the_keys():
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "adapt.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--objective.temperature float (default 2.0)" in out.stdout
    assert len([line for line in out.stdout.splitlines() if line.startswith("    --")]) == len(leaf_keys(AdaptConfig))


def test_field_type_and_dotted_merges():
    assert field_type(AdaptConfig, "train.lr") is float
    with pytest.raises(ConfigError, match=r"space: unknown config key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        field_type(AdaptConfig, "train.lrr", what="space: ")
    with pytest.raises(ConfigError, match="is a config section"):
        field_type(AdaptConfig, "train")
    base = {"train": {"lr": 1.0, "epochs": 2}, "model": "x"}
    merged = apply_dotted(base, {"train.lr": 2.0, "model": {"name_or_path": "y"}})
    assert merged == {"train": {"lr": 2.0, "epochs": 2}, "model": {"name_or_path": "y"}} and base["train"]["lr"] == 1.0


def test_yaml_and_overrides_through_one_loader(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-5\n  epochs: 2\n")
    cfg = load_config(AdaptConfig, path, ["--train.epochs", "4", "--objective.name=ft"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.objective.name) == (3e-5, 4, "ft")
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_config(AdaptConfig, path)


def test_data_inspect_reads_its_config_through_the_same_loader(tmp_path):
    from disc_ray.data.inspect import load_inspect_config

    path = tmp_path / "job.yaml"  # a main-job config: inspect takes its data and split sections
    path.write_text("data:\n  text_field: meta.context\nsplit:\n  seed: 9\ntrain:\n  lr: 1.0e-5\n")
    cfg = load_inspect_config("corpus.jsonl", str(path), ["--split.strategy", "token_random", "--data.dedupe=false"])
    assert (cfg.data.path, cfg.data.text_field, cfg.data.dedupe) == ("corpus.jsonl", "meta.context", False)
    assert (cfg.split.seed, cfg.split.strategy) == (9, "token_random")
    with pytest.raises(ConfigError, match=r"unknown config key 'data.text_feild' \(did you mean 'data.text_field'\?\)"):
        load_inspect_config("corpus.jsonl", None, ["--data.text_feild", "x"])
