"""The main job's driver logic, shared by ``jobs/adapt.py`` and ``disc-ray adapt``.

Parses ``--config FILE`` plus ``--section.key value`` overrides into an :class:`AdaptConfig`,
checks everything that can be checked without workers (config values, model path, corpus path),
then calls :func:`disc_ray.train.launch`. Expected failures print ``error: <reason>`` and return 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from disc_ray.config import AdaptConfig, ConfigError, dump_config, format_config_help, load_config

USAGE_ERRORS = (ConfigError, FileNotFoundError, ValueError)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="adapt", description="Adapt a model to a corpus with DiSC on Ray. Any config key is an option: --train.lr 1e-5.",
        epilog=format_config_help(AdaptConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own INFO lines (worker start-up, dataset plans, training reports) on the console")
    parser.add_argument("--before-after", action="store_true",
                        help="after training on the built-in synthetic corpus (no data.path), evaluate the original and the "
                             "exported model on its closed-book probes and drift, and print a before/after table with 95%% "
                             "intervals (what `make demo` runs; ~2 extra minutes on 2 CPU cores)")
    return parser.parse_known_args(argv)


def check_inputs(cfg: AdaptConfig) -> None:
    """Fail fast on the driver: the model must resolve and a local corpus path must exist."""
    from disc_ray.models import resolve_model_source

    resolve_model_source(cfg.model.name_or_path, cfg.model.cache_dir)
    path = cfg.data.path
    if path and cfg.data.format != "hub" and not any(ch in path for ch in "*?[") and not Path(path).expanduser().exists():
        looks_like_hub_id = cfg.data.format == "auto" and path.count("/") == 1 and not path.startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise FileNotFoundError(f"data.path does not exist: {path}")


def with_synthetic_corpus(cfg: AdaptConfig) -> AdaptConfig:
    """No ``data.path``: write the built-in synthetic corpus (documents + probes) into the run folder and use it."""
    if cfg.data.path:
        return cfg
    from disc_ray.synthetic import write_corpus

    folder = Path(cfg.run.resolved_output_dir()).parent / "synthetic_corpus"
    paths = write_corpus(folder, num_documents=cfg.data.synthetic_documents, seed=cfg.split.seed)
    print(f"[disc-ray] no data.path given: using the built-in synthetic corpus ({cfg.data.synthetic_documents} documents) "
          f"written to {folder} (probes for evaluation: {paths['probes']})")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(paths["documents"]), format="jsonl", text_field="text"))


def with_run_data_dir(cfg: AdaptConfig) -> AdaptConfig:
    """Processed rows and rejects live with the run (``<storage>/<run.name>/data``) unless ``data.output_dir`` says
    otherwise or the storage is remote."""
    storage = cfg.run.resolved_storage_path()
    if cfg.data.output_dir is not None or "://" in storage:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, output_dir=str(Path(storage) / cfg.run.name / "data")))


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    from disc_ray.models import ModelLoadError

    try:
        cfg = load_config(AdaptConfig, args.config, overrides)
        if args.print_config:
            dump_config(cfg, "/dev/stdout")
            return 0
        check_inputs(cfg)
        if args.before_after and cfg.data.path:
            raise ConfigError("--before-after evaluates on the built-in synthetic corpus's probes: leave data.path unset "
                              "(for your own corpus and questions use jobs/evaluate.py MODEL_DIR --baseline ORIGINAL)")
        cfg = with_run_data_dir(with_synthetic_corpus(cfg))
        from disc_ray.train import launch

        summary = launch(cfg, verbose=args.verbose)
        if args.before_after:
            show_before_after(cfg, summary["output_dir"])
    except (*USAGE_ERRORS, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def show_before_after(cfg: AdaptConfig, adapted_dir: str) -> dict:
    """Evaluate the original and the exported model on the synthetic corpus's probes (written next to its
    documents) and drift; print the before/after table. Returns the ``eval.json`` content (in ``adapted_dir/eval``)."""
    import time

    from disc_ray.evaluation.before_after import before_after_config, format_before_after, run_before_after

    probes = Path(cfg.data.path).with_name("probes.jsonl")
    print(f"[disc-ray] what the run learned and kept: the original and the adapted model on {probes.name} (closed book) "
          "and drift", flush=True)
    started = time.perf_counter()
    record = run_before_after(adapted_dir, cfg.model.name_or_path, probes,
                              cfg=before_after_config(probes, cache_dir=cfg.model.cache_dir))
    print(format_before_after(record), flush=True)
    print(f"[disc-ray] evaluated in {time.perf_counter() - started:.0f} s; every score: {Path(adapted_dir) / 'eval' / 'eval.md'}",
          flush=True)
    return record


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("adapt", help="adapt a model to a corpus with DiSC on Ray (same options as jobs/adapt.py)",
                                   add_help=False)
    parser.set_defaults(run=lambda args, rest: main(rest), accepts_overrides=True)
