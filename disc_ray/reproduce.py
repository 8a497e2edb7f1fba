"""The paper's claim at small scale: DiSC vs ``ft`` and ``ft_kl`` over a learning-rate grid, on BioASQ and the
built-in synthetic corpus.

    python jobs/reproduce.py --preset quick          # 3 methods x 3 LRs, 12 passages + 4 synthetic documents (<30 min)
    python jobs/reproduce.py --preset full           # 3 methods x 3 LRs x 2 seeds, 208 passages + 24 synthetic (~6 h)
    python jobs/reproduce.py --quick --out ~/repro --model /models/Qwen2.5-0.5B-Instruct
    python jobs/reproduce.py --quick --methods disc,ft,ft_kl,lora,talr,rephrase,cd_base   # every baseline
    python jobs/reproduce.py --config my_sweep.yaml  # a sweep file of your own in the presets' format
    python jobs/reproduce.py --preset full --report-only true   # tables from the runs finished so far

A preset is a sweep file, ``tune/spaces/reproduce_<preset>.yaml`` (:mod:`disc_ray.tuning.space`'s format) with
one more section, ``reproduce:``, holding defaults of :class:`ReproduceConfig` (the corpus sizes). The command's
keys are :class:`ReproduceConfig`'s (``--key value``; the sweep file's sections as ``--evaluation.limit 8``),
read by the one config loader (:mod:`disc_ray.config`); ``--help`` lists them.

Every run trains on the same documents: the first ``documents`` BioASQ passages and ``synthetic_documents``
documents of the built-in corpus (:mod:`disc_ray.synthetic`), and is evaluated closed book on the passages'
multiple-choice questions and the synthetic documents' probes (``domain_mcq``, per ``meta.kind``: ``bioasq``,
``restated``, ``single``), on an IFEval subset and on drift, against the original model. The experiment is a Ray
Tune sweep: running the same command again resumes it (finished runs are kept, their ``eval.json`` reused; an
interrupted run continues from its last checkpoint), so a long preset can run across sessions. On top of the
sweep's own outputs it writes ``results.md`` / ``results.csv`` (method x LR (x seed) x metrics, the original
first), ``tradeoff.png``, ``retention_vs_lr.png``, ``frontier.png`` and ``comparison.md`` (the paper's rule per
method, then the methods at matched retention); the README's "Reproducing" section says what each holds.

Every score has a 95% bootstrap interval over the questions / prompts and every comparison a paired one
(:mod:`disc_ray.evaluation.stats`). The default domain score is ``prob_correct`` (the probability on the
correct option, length-normalized: see ``DOMAIN_METRICS``), not ``accuracy_ll``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from disc_ray.config import ConfigError, apply_dotted, build_dataclass, field_type, load_config, parse_overrides, read_yaml_mapping
from disc_ray.evaluation.config import DEFAULT_MCQ_PATH
from disc_ray.records import read_jsonl
from disc_ray.reproduce_outputs import (  # noqa: F401  (re-exported: the command's tables, plots and constants)
    ALL_METHODS, BIOASQ_KIND, COLUMNS, DEFAULT_DOMAIN_METRIC, DOMAIN_METRICS, KINDS, MARKDOWN_COLUMNS, METHODS, SKILL_METRIC,
    comparison_text, methods_run, plot, run_rows, select_per_method, write_tables)

PRESET_DIR = Path(__file__).resolve().parents[1] / "tune" / "spaces"
"""The presets: ``reproduce_<name>.yaml`` here."""
SWEEP_SECTIONS = ("sweep", "base", "evaluation", "selection", "drift", "scheduler", "resources")


# --------------------------------------------------------------------------- the command's config


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Everything ``jobs/reproduce.py`` takes (``--key value``). A preset file's ``reproduce:`` section sets
    defaults of these keys; the command line wins."""

    preset: str = "quick"
    """``quick`` (under 30 min on 2 CPU cores) or ``full`` (~6 h on 2 cores, resumable): ``tune/spaces/reproduce_<preset>.yaml``.
    ``--quick`` is ``--preset quick``."""
    config: str | None = None
    """A sweep file in the presets' format to run instead of ``preset``."""
    out: str | None = None
    """Where the experiment folder goes (null: the preset's ``sweep.storage_path``, ``~/disc-ray-reproduce``)."""
    name: str | None = None
    """Experiment folder name (null: the preset's ``sweep.name``, ``reproduce-quick`` / ``reproduce-full``); running
    the same name again resumes the experiment."""
    model: str | None = None
    """The model to adapt (null: the preset's ``model.name_or_path``, the embedded SmolLM2-135M-Instruct)."""
    methods: tuple[str, ...] = ()
    """Methods to train, comma separated, from ft, ft_kl, talr, lora, rephrase, cd_base, disc (empty: the preset's ft, ft_kl, disc)."""
    lrs: tuple[float, ...] = ()
    """Learning rates, comma separated (empty: the preset's)."""
    seeds: tuple[int, ...] = ()
    """``train.seed`` values (document order, initialisation), comma separated; each run is repeated per seed
    (empty: the preset's: none for quick, 0,1 for full)."""
    documents: int = 12
    """BioASQ passages trained on and asked about: the file's first rows with a passage (208: all)."""
    synthetic_documents: int = 0
    """Documents of the built-in synthetic corpus trained on together with the passages; their probes
    (``restated``, ``single``) are asked too."""
    domain_metric: str = DEFAULT_DOMAIN_METRIC
    """What the paper's rule maximises: prob (probability on the correct option), ll_norm, ll (raw log-likelihood
    accuracy, favours short options) or gen (see ``DOMAIN_METRICS``)."""
    bioasq: str = str(DEFAULT_MCQ_PATH)
    """BioASQ MCQ JSONL (passages under ``meta.context``)."""
    sweep: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys of the sweep file's ``sweep`` section, e.g. ``--sweep.num_cpus 4``."""
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The sweep file's ``base`` section, e.g. ``--base.overrides.train.epochs 2``."""
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys of the sweep file's ``evaluation`` section (any evaluation key), e.g. ``--evaluation.limit 32``."""
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys of the sweep file's ``selection`` section, e.g. ``--selection.max_drop 3``."""
    drift: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys of the sweep file's ``drift`` section, e.g. ``--drift.every_n_steps 8``."""
    scheduler: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The sweep file's ``scheduler`` section, e.g. ``--scheduler.drift_budget.max 1.0``."""
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keys of the sweep file's ``resources`` section, e.g. ``--resources.trial_gpus 1``."""
    report_only: bool = False
    """Train and evaluate nothing: write the tables, plots and comparison from the runs finished so far (a preset
    run in parts, or one still running in another process: Tune's state is only read). Runs not finished are
    listed as ``unfinished``."""

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: expected distinct methods from {','.join(ALL_METHODS)}, got {','.join(self.methods)!r}")
        if self.domain_metric not in DOMAIN_METRICS:
            raise ValueError(f"domain_metric must be one of {', '.join(DOMAIN_METRICS)}, got {self.domain_metric!r}")
        if self.documents < 0 or self.synthetic_documents < 0 or self.documents + self.synthetic_documents < 1:
            raise ValueError(f"documents and synthetic_documents must be >= 0 and not both 0, got "
                             f"{self.documents} and {self.synthetic_documents}")
        if any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs must be > 0, got {list(self.lrs)}")


def preset_names() -> list[str]:
    return sorted(p.stem.removeprefix("reproduce_") for p in PRESET_DIR.glob("reproduce_*.yaml"))


def load_reproduce_config(argv: list[str]) -> tuple[ReproduceConfig, dict]:
    """``--key value`` arguments -> (the validated config, the sweep file it runs, without ``reproduce:``).

    The preset file (or ``--config``) is read first; its ``reproduce:`` section sets defaults, the arguments
    win. Raises ConfigError (one line; did-you-mean for an unknown key or preset)."""
    argv = [arg for a in argv for arg in (("--preset", "quick") if a == "--quick" else (a,))]
    cli = parse_overrides(argv)
    for key in cli:  # unknown keys fail before any file is read (did-you-mean)
        field_type(ReproduceConfig, key)
    chosen = build_dataclass(ReproduceConfig, {k: v for k, v in cli.items() if k in ("preset", "config")})
    if chosen.config:
        raw = read_yaml_mapping(Path(chosen.config).expanduser(), "reproduction sweep file")
    else:
        path = PRESET_DIR / f"reproduce_{chosen.preset}.yaml"
        if not path.is_file():
            import difflib

            close = difflib.get_close_matches(chosen.preset, preset_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"preset: unknown preset '{chosen.preset}'{hint}; presets: {', '.join(preset_names())} "
                              f"(files {PRESET_DIR}/reproduce_<preset>.yaml)")
        raw = read_yaml_mapping(path, "preset file")
    defaults = raw.pop("reproduce", None) or {}
    if not isinstance(defaults, dict) or {"preset", "config"} & set(defaults):
        raise ConfigError("reproduce: the preset file's reproduce section must be a mapping of keys other than preset/config")
    return load_config(ReproduceConfig, overrides=argv, preset=defaults), raw


# --------------------------------------------------------------------------- inputs and the sweep file


def write_inputs(bioasq_path: Path, documents: int, synthetic_documents: int, out_dir: Path, seed: int = 0) -> dict:
    """The corpus every run trains on and the questions every run is asked, written into ``out_dir``.

    ``documents.jsonl``: ``{"id", "text", "source"}`` per document, the first ``documents`` BioASQ passages
    (``meta.context``) then ``synthetic_documents`` synthetic documents (seeded by ``seed``). ``questions.jsonl``:
    the passages' questions (``meta.kind`` ``bioasq``) then the synthetic probes (``restated`` / ``single``),
    ``meta.id`` unique across both (it pairs items across runs). Returns ``{"documents", "questions" (paths),
    "n_documents", "n_questions", "kinds" ({kind: count})}``. Raises ValueError when the BioASQ file has fewer
    passages than asked."""
    passages = []
    if documents:
        for _, row in read_jsonl(bioasq_path, "BioASQ file"):
            if (row.get("meta") or {}).get("context", "").strip():
                passages.append(row)
            if len(passages) == documents:
                break
    if len(passages) < documents:
        raise ValueError(f"{bioasq_path} has {len(passages)} rows with a passage, fewer than the {documents} asked for")
    corpus = [{"id": f"bioasq-{i}", "text": row["meta"]["context"], "source": "bioasq"} for i, row in enumerate(passages)]
    questions = [{**row, "meta": {**row["meta"], "id": f"bioasq-{i}", "kind": BIOASQ_KIND}} for i, row in enumerate(passages)]
    if synthetic_documents:
        from disc_ray.synthetic import generate_corpus, probe_rows

        generated = generate_corpus(synthetic_documents, seed)
        corpus += [{"id": f"synthetic-{d.doc_id}", "text": d.text, "source": "synthetic"} for d in generated]
        questions += [{**row, "meta": {**row["meta"], "id": f"synthetic-{row['meta']['id']}"}} for row in probe_rows(generated)]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"documents": out_dir / "documents.jsonl", "questions": out_dir / "questions.jsonl"}
    for key, rows in (("documents", corpus), ("questions", questions)):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if not paths[key].is_file() or paths[key].read_text(encoding="utf-8") != text:  # a resume finds them unchanged
            paths[key].write_text(text, encoding="utf-8")
    kinds: dict[str, int] = {}
    for row in questions:
        kinds[row["meta"]["kind"]] = kinds.get(row["meta"]["kind"], 0) + 1
    return {**paths, "n_documents": len(corpus), "n_questions": len(questions), "kinds": kinds}


def experiment_dir(cfg: ReproduceConfig, raw: dict) -> Path:
    """``<out>/<name>``: the sweep folder, where the inputs, runs and tables go."""
    section = raw.get("sweep") or {}
    out = cfg.out or section.get("storage_path") or "~/disc-ray-reproduce"
    name = cfg.name or section.get("name") or "reproduce"
    return Path(out).expanduser().resolve() / name


def sweep_file(cfg: ReproduceConfig, raw: dict, inputs: dict) -> dict:
    """The sweep file (see :mod:`disc_ray.tuning.space`) that runs the experiment: ``raw`` with the corpus and
    questions of ``inputs`` (from :func:`write_inputs`) and ``cfg``'s keys applied."""
    raw = copy.deepcopy(raw)
    for section in SWEEP_SECTIONS:  # the sweep file's sections, merged as tune/sweep.py merges its overrides
        value = getattr(cfg, section)
        if value:
            raw[section] = apply_dotted(raw.get(section) or {}, value)
    experiment = experiment_dir(cfg, raw)
    raw["sweep"] = {**(raw.get("sweep") or {}), "name": experiment.name, "storage_path": str(experiment.parent)}
    base = dict(raw.get("base") or {})
    overrides = dict(base.get("overrides") or {})
    overrides.update({"data.path": str(inputs["documents"]), "data.format": "jsonl", "data.text_field": "text"})
    if cfg.model:
        overrides["model.name_or_path"] = cfg.model
    raw["base"] = {**base, "overrides": overrides}
    space = dict(raw.get("space") or {})
    for key, values in (("objective.name", list(cfg.methods)), ("train.lr", list(cfg.lrs)), ("train.seed", list(cfg.seeds))):
        if values:
            space[key] = {"grid": values}
    if "objective.name" not in space or "train.lr" not in space:
        raise ConfigError("space: a reproduction sweeps objective.name and train.lr (grids); the file lacks one")
    raw["space"] = space
    raw["evaluation"] = {**(raw.get("evaluation") or {}), "mcq_path": str(inputs["questions"]),
                         "mcq_limit": inputs["n_questions"]}
    raw["selection"] = {**(raw.get("selection") or {}), "domain_metric": [DOMAIN_METRICS[cfg.domain_metric]],
                        "retained_metrics": [SKILL_METRIC]}
    return raw


def finished_runs(sweep_dir: Path) -> list[Path]:
    """The runs of a sweep folder that were trained and evaluated (``runs/<trial>/model/eval/eval.json``): a
    resume keeps them (Tune does not start them again, and a restarted trial reuses its export and eval.json)."""
    return sorted(path.parents[2] for path in Path(sweep_dir).glob("runs/*/model/eval/eval.json"))


# --------------------------------------------------------------------------- the experiment


def run_reproduction(cfg: ReproduceConfig, raw: dict, *, log=print) -> dict:
    """Write the inputs, run (or resume) the sweep, then the tables, plots and comparison. ``raw``: the sweep file
    (from :func:`load_reproduce_config`). Returns the rows, the per-method selection and the output paths."""
    from disc_ray.tuning.driver import run_sweep
    from disc_ray.tuning.space import parse_sweep

    experiment = experiment_dir(cfg, raw)
    inputs = write_inputs(Path(cfg.bioasq).expanduser(), cfg.documents, cfg.synthetic_documents, experiment / "inputs")
    sweep = parse_sweep(sweep_file(cfg, raw, inputs), cfg.config)
    log(f"[reproduce] {inputs['n_documents']} documents, {inputs['n_questions']} questions "
        f"({', '.join(f'{k} {n}' for k, n in inputs['kinds'].items())}); {experiment}")
    done = finished_runs(experiment)
    if cfg.report_only:
        log(f"[reproduce] report only: {len(done)} run(s) trained and evaluated so far")
    elif done:
        log(f"[reproduce] resuming: {len(done)} run(s) already trained and evaluated are kept, the others run")
    outcome = run_sweep(sweep, select_only=cfg.report_only)
    outcome["baseline_eval"] = json.loads((experiment / "baseline" / "eval.json").read_text())
    outcome["per_method"] = select_per_method(outcome["records"], outcome["baseline"], sweep.selection)
    rows = run_rows(outcome, cfg.domain_metric)
    tables = write_tables(rows, experiment)
    plots = plot(rows, experiment, sweep.selection.max_drop, cfg.domain_metric)
    comparison = comparison_text(rows, outcome["per_method"], outcome["records"], sweep.selection.max_drop, cfg.domain_metric)
    (experiment / "comparison.md").write_text(comparison)
    log((experiment / "results.md").read_text())
    log(comparison)
    log(f"[reproduce] tables {tables[1]}, plots {plots[0]}, {plots[1]} and {plots[2]}")
    return {"rows": rows, "per_method": outcome["per_method"], "experiment_dir": str(experiment),
            "paths": {"csv": str(tables[0]), "markdown": str(tables[1]), "tradeoff": str(plots[0]),
                      "retention_vs_lr": str(plots[1]), "frontier": str(plots[2]),
                      "comparison": str(experiment / "comparison.md")}}


def help_text() -> str:
    from disc_ray.config import format_config_help

    usage = __doc__.split("\n\n")[1]
    return (f"usage: jobs/reproduce.py [--preset quick|full | --quick | --config FILE] [--key VALUE ...]\n\n"
            f"{' '.join(__doc__.split(chr(10) * 2)[0].split())}\n\n{usage}\n\npresets: {', '.join(preset_names())} ({PRESET_DIR})\n\n"
            + format_config_help(ReproduceConfig))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    from disc_ray.evaluation.config import EvalInputError
    from disc_ray.models import ModelLoadError

    try:
        run_reproduction(*load_reproduce_config(argv))
    except (ConfigError, EvalInputError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
