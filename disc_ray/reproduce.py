"""The paper's claim at small scale: DiSC vs ``ft`` and ``ft_kl`` over a learning-rate grid, on BioASQ and the
built-in synthetic corpus.

    python jobs/reproduce.py --preset quick          # 3 methods x 3 LRs, 12 passages + 4 synthetic documents (<30 min)
    python jobs/reproduce.py --preset full           # 3 methods x 3 LRs x 2 seeds, 208 passages + 24 synthetic (~7 h)
    python jobs/reproduce.py --quick --out ~/repro --model /models/Qwen2.5-0.5B-Instruct
    python jobs/reproduce.py --quick --methods disc,ft,ft_kl,lora,talr   # the LoRA and TALR baselines too
    python jobs/reproduce.py --config my_sweep.yaml  # a sweep file of your own in the presets' format

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

from disc_ray.config import ConfigError, apply_dotted, build_dataclass, field_type, parse_overrides, read_yaml_mapping
from disc_ray.evaluation.config import DEFAULT_MCQ_PATH
from disc_ray.records import read_jsonl
from disc_ray.reporting import draw_error_bars, format_ci, format_number, markdown_table, new_figure, save_figure, write_csv

METHODS = ("ft", "ft_kl", "disc")
"""The methods the presets train (``--methods`` picks others)."""
ALL_METHODS = ("ft", "ft_kl", "talr", "lora", "rephrase", "cd_base", "disc")
"""Every method ``--methods`` accepts, in the order tables and plots list them: the ``objective.name`` values
(``talr``: token-adaptive loss reweighting, ``lora``: CE through merged LoRA adapters; ``rephrase``: CE on the model's own rewrite; ``cd_base``: context distillation on its own continuation; see the README)."""
DOMAIN_METRICS = {"prob": "domain_mcq.prob_correct", "ll_norm": "domain_mcq.accuracy_ll_norm",
                  "ll": "domain_mcq.accuracy_ll", "gen": "domain_mcq.accuracy_gen"}
"""What the rule maximises. ``prob`` (default): the probability on the correct option (softmax over the options'
log-likelihoods per byte), continuous, so it moves before the argmax flips and separates runs on a few dozen
questions. ``ll_norm``: accuracy of the same length-normalized choice. ``ll``: accuracy of the raw summed
log-likelihood, which favours short options (the correct option is strictly the shortest in 59 of the 208
BioASQ questions; the 135M original scores 40.9 on ``ll`` against 29.3 on ``ll_norm``), so a run that shifts
probability towards short answers gains on it without learning. ``gen``: the paper's protocol (the answer
letter in ``<answer>`` tags, majority vote); small models do not follow that format (SmolLM2-135M parses 0 of
12 here), so it only separates runs of larger models (it needs ``--evaluation.mcq_modes ll,gen``)."""
DEFAULT_DOMAIN_METRIC = "prob"
SKILL_METRIC = "ifeval.inst_strict"
PRESET_DIR = Path(__file__).resolve().parents[1] / "tune" / "spaces"
"""The presets: ``reproduce_<name>.yaml`` here."""
SWEEP_SECTIONS = ("sweep", "base", "evaluation", "selection", "drift", "scheduler", "resources")
BIOASQ_KIND = "bioasq"
"""``meta.kind`` of the BioASQ questions in the written question file (the synthetic probes keep theirs)."""


# --------------------------------------------------------------------------- the command's config


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Everything ``jobs/reproduce.py`` takes (``--key value``). A preset file's ``reproduce:`` section sets
    defaults of these keys; the command line wins."""

    preset: str = "quick"
    """``quick`` (under 30 min on 2 CPU cores) or ``full`` (~7 h, resumable): ``tune/spaces/reproduce_<preset>.yaml``.
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
    return build_dataclass(ReproduceConfig, apply_dotted(defaults, cli)), raw


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


# --------------------------------------------------------------------------- tables, plots, comparison


def run_rows(outcome: dict, domain_metric: str = DEFAULT_DOMAIN_METRIC) -> list[dict]:
    """One row per run (the original first), with the domain scores and intervals read from each run's eval.json.
    ``row["scores"]``: the run's :class:`~disc_ray.evaluation.selection.RunScores` under ``domain_metric`` (with
    per-item values, for the paired comparisons); ``row["frontier"]``: its point on the method's frontier. Runs
    repeated per seed (``train.seed`` swept) are one row each, ``row["seed"]`` telling them apart."""
    from disc_ray.evaluation.frontier import frontier_point
    from disc_ray.evaluation.selection import run_scores

    metric = DOMAIN_METRICS[domain_metric]
    baseline = outcome["baseline_eval"]["suites"]
    original = run_scores("original", baseline, [metric], [SKILL_METRIC])
    rows = [{"method": "original", "lr": None, "seed": None, "status": "", **_scores(baseline), "selected": "",
             "scores": original}]
    order = lambda r: (ALL_METHODS.index(r.params["objective.name"]), r.params["train.lr"], r.params.get("train.seed", -1))  # noqa: E731
    for record in sorted(outcome["records"], key=order):
        suites = {}
        if record.model_dir and (Path(record.model_dir) / "eval" / "eval.json").exists():
            suites = json.loads((Path(record.model_dir) / "eval" / "eval.json").read_text())["suites"]
        method, lr, seed = record.params["objective.name"], record.params["train.lr"], record.params.get("train.seed")
        label = f"{lr:.0e}" + ("" if seed is None else f" seed {seed}")
        scores = run_scores(f"{method} lr {label}", suites, [metric], [SKILL_METRIC])
        row = {"method": method, "lr": lr, "seed": seed, "trial_id": record.trial_id, "status": record.status,
               **_scores(suites), "selected": "yes" if record.trial_id in outcome["per_method"].values() else "",
               "scores": scores,
               "frontier": frontier_point(method, label, scores, original, SKILL_METRIC) if suites else None}
        if record.status != "completed" and record.drift_kl is not None:
            row["drift_kl"] = record.drift_kl
        if row["frontier"] is not None and row["frontier"].retention_ci is not None:
            row["ifeval_change_ci_low"], row["ifeval_change_ci_high"] = row["frontier"].retention_ci
        rows.append(row)
    base_skill = rows[0]["ifeval_inst_strict"]
    for row in rows:
        skill = row["ifeval_inst_strict"]
        row["ifeval_change"] = None if skill is None or base_skill is None else skill - base_skill
    return rows


def _scores(suites: dict) -> dict:
    mcq, ifeval, drift = suites.get("domain_mcq", {}), suites.get("ifeval", {}), suites.get("drift", {})
    ci = lambda metrics, key, end: (metrics.get("ci", {}).get(key) or [None, None])[end]  # noqa: E731
    kinds = mcq.get("by_kind") or {}
    return {**{f"mcq_prob_{kind}": (kinds.get(kind) or {}).get("prob_correct") for kind in KINDS},
            "mcq_prob": mcq.get("prob_correct"), "mcq_prob_ci_low": ci(mcq, "prob_correct", 0),
            "mcq_prob_ci_high": ci(mcq, "prob_correct", 1), "mcq_margin": mcq.get("margin"),
            "mcq_ll_norm": mcq.get("accuracy_ll_norm"), "mcq_gen": mcq.get("accuracy_gen"),
            "mcq_gen_lenient": mcq.get("accuracy_gen_lenient"), "mcq_ll": mcq.get("accuracy_ll"),
            "ifeval_inst_strict": ifeval.get("inst_strict"), "ifeval_inst_strict_ci_low": ci(ifeval, "inst_strict", 0),
            "ifeval_inst_strict_ci_high": ci(ifeval, "inst_strict", 1), "ifeval_inst_loose": ifeval.get("inst_loose"),
            "ifeval_prompt_strict": ifeval.get("prompt_strict"), "drift_kl": drift.get("kl"), "drift_nll": drift.get("nll")}


KINDS = (BIOASQ_KIND, "restated", "single")
"""The question kinds whose ``prob_correct`` gets a column: BioASQ, and the synthetic probes (a fact restated in
other words; a fact stated once in its document)."""
COLUMNS = ("method", "lr", "seed", "status", "mcq_prob", "mcq_prob_ci_low", "mcq_prob_ci_high",
           *(f"mcq_prob_{kind}" for kind in KINDS), "mcq_margin", "mcq_ll_norm",
           "mcq_gen", "mcq_gen_lenient", "mcq_ll", "ifeval_inst_strict", "ifeval_inst_strict_ci_low",
           "ifeval_inst_strict_ci_high", "ifeval_change", "ifeval_change_ci_low", "ifeval_change_ci_high",
           "ifeval_inst_loose", "ifeval_prompt_strict", "drift_kl", "drift_nll", "selected")
MARKDOWN_COLUMNS = ("method", "lr", "seed", "status", "mcq_prob", *(f"mcq_prob_{kind}" for kind in KINDS), "mcq_ll_norm",
                    "mcq_gen", "mcq_gen_lenient", "mcq_ll",
                    "ifeval_inst_strict", "ifeval_change", "ifeval_inst_loose", "drift_kl", "selected")
"""``results.md`` shows intervals inside the cells (``41.2 [36.1, 46.3]``); the CSV has them as columns."""


def write_tables(rows: list[dict], out: Path) -> tuple[Path, Path]:
    write_csv(out / "results.csv", rows, COLUMNS)

    def cell(row: dict, key: str) -> str:
        if key == "mcq_prob" and row.get("mcq_prob") is not None:
            return format_ci(row["mcq_prob"], [row.get("mcq_prob_ci_low"), row.get("mcq_prob_ci_high")])
        if key == "ifeval_inst_strict" and row.get(key) is not None:
            return format_ci(row[key], [row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")])
        if key == "ifeval_change" and row.get(key) is not None and row.get("ifeval_change_ci_low") is not None:
            return format_ci(row[key], [row["ifeval_change_ci_low"], row["ifeval_change_ci_high"]], signed=True)
        return format_number(row.get(key), small="exponent")  # learning rates: 3e-04

    table = markdown_table(MARKDOWN_COLUMNS, [[cell(row, k) for k in MARKDOWN_COLUMNS] for row in rows])
    (out / "results.md").write_text(
        "Scores in points (0-100) with 95% bootstrap intervals over the questions / prompts; `ifeval_change` vs the "
        "original with its PAIRED interval; `mcq_margin` in nats/byte, drift in nats/token; `selected`: the paper's "
        "rule, per method.\n\n" + table + "\n")
    return out / "results.csv", out / "results.md"


def plot(rows: list[dict], out: Path, max_drop: float, domain_metric: str = DEFAULT_DOMAIN_METRIC) -> tuple[Path, Path, Path]:
    """``tradeoff.png`` (every run), ``retention_vs_lr.png`` and ``frontier.png`` (each method's frontier), with
    95% intervals as error bars (IFEval changes: paired intervals)."""
    from disc_ray.evaluation.frontier import BUDGETS, COLOURS, plot_frontiers

    original, runs = rows[0], rows[1:]
    domain_label = f"BioASQ closed-book MCQ: {DOMAIN_METRICS[domain_metric]} (points)"

    fig, ax = new_figure()
    for method in methods_run(runs):
        points = [r for r in runs if r["method"] == method and r.get("frontier") is not None
                  and r["frontier"].retention is not None and r["scores"].domain is not None]
        for r in points:
            draw_error_bars(ax, r["frontier"].retention, r["scores"].domain, r["frontier"].retention_ci,
                            r["scores"].domain_ci, colour=COLOURS[method])
            ax.annotate(f"{r['lr']:.0e}", (r["frontier"].retention, r["scores"].domain), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        ax.scatter([r["frontier"].retention for r in points], [r["scores"].domain for r in points], c=COLOURS[method],
                   label=method, zorder=3)
    if original["scores"].domain is not None:
        draw_error_bars(ax, 0.0, original["scores"].domain, None, original["scores"].domain_ci, colour="tab:red")
        ax.scatter([0.0], [original["scores"].domain], marker="*", s=200, c="tab:red", label="original", zorder=4)
    ax.axvline(-max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"-{max_drop:g} points")
    ax.set_xlabel("IFEval instruction-level strict, change vs original (points)")
    ax.set_ylabel(domain_label)
    save_figure(fig, ax, out / "tradeoff.png", "Knowledge gained vs instruction following kept (95% intervals)")

    fig, ax = new_figure()
    for method in methods_run(runs):
        points = sorted((r for r in runs if r["method"] == method), key=lambda r: r["lr"])
        values = [r["ifeval_inst_strict"] if r["ifeval_inst_strict"] is not None else float("nan") for r in points]
        ax.plot([r["lr"] for r in points], values, "-o", c=COLOURS[method], label=method)
        for r, value in zip(points, values):
            if r.get("ifeval_inst_strict_ci_low") is not None:
                draw_error_bars(ax, r["lr"], value, None, (r["ifeval_inst_strict_ci_low"], r["ifeval_inst_strict_ci_high"]),
                                colour=COLOURS[method])
    if original["ifeval_inst_strict"] is not None:
        ax.axhline(original["ifeval_inst_strict"], color="tab:red", linewidth=1, label="original")
        ax.axhline(original["ifeval_inst_strict"] - max_drop, color="tab:red", linestyle="--", linewidth=1,
                   label=f"original - {max_drop:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("IFEval instruction-level strict (points)")
    save_figure(fig, ax, out / "retention_vs_lr.png", "Retention vs learning rate (95% intervals)")
    frontier = plot_frontiers([r["frontier"] for r in runs if r.get("frontier") is not None], original["scores"],
                              out / "frontier.png", budgets=BUDGETS, domain_label=domain_label,
                              skill_label="IFEval instruction-level strict")
    return out / "tradeoff.png", out / "retention_vs_lr.png", frontier


def methods_run(runs: list[dict]) -> list[str]:
    """The methods that have at least one run in ``runs``, in :data:`ALL_METHODS` order."""
    return [m for m in ALL_METHODS if any(r["method"] == m for r in runs)]


def select_per_method(records: list, baseline, spec) -> dict[str, str | None]:
    """The paper's rule applied to each method's runs separately: {method: selected trial id or None}."""
    from disc_ray.tuning.selection import select_trials

    chosen = {}
    for method in ALL_METHODS:
        own = [copy.deepcopy(r) for r in records if r.params["objective.name"] == method]
        if own:
            chosen[method] = select_trials(own, baseline, spec).best
    return chosen


def comparison_text(rows: list[dict], per_method: dict, records: list, max_drop: float,
                    domain_metric: str = DEFAULT_DOMAIN_METRIC) -> str:
    """The paper's rule per method (with intervals), then the methods at matched retention (2 and 5 points)."""
    from disc_ray.evaluation.frontier import BUDGETS, best_at_budgets, format_budget_markdown

    def num(value) -> str:
        return format_number(value, small="exponent")

    by_id = {r.trial_id: r for r in records}
    original = rows[0]
    metric = DOMAIN_METRICS[domain_metric]
    lines = [f"Paper's rule, per method: best domain score ({metric}) with at most {max_drop:g} points lost on IFEval "
             f"(original: {metric} {format_ci(original['scores'].domain, original['scores'].domain_ci)}, "
             f"MCQ gen {num(original['mcq_gen'])} (lenient parse {num(original['mcq_gen_lenient'])}), "
             f"MCQ ll {num(original['mcq_ll'])}, ll_norm {num(original['mcq_ll_norm'])}, "
             f"IFEval {format_ci(original['ifeval_inst_strict'], [original['ifeval_inst_strict_ci_low'], original['ifeval_inst_strict_ci_high']])}). "
             "Intervals: 95% bootstrap over questions / prompts; changes vs the original are paired.", ""]
    for method, trial_id in per_method.items():
        if trial_id is None:
            lines.append(f"- {method}: no learning rate keeps IFEval within {max_drop:g} points")
            continue
        record = by_id[trial_id]
        row = next(r for r in rows[1:] if r.get("trial_id") == trial_id)
        change = row["frontier"].retention_ci if row.get("frontier") else None
        lines.append(f"- {method}: lr {record.params['train.lr']:g}: {metric} "
                     f"{format_ci(row['scores'].domain, row['scores'].domain_ci)}, MCQ gen {num(row['mcq_gen'])}, "
                     f"MCQ ll {num(row['mcq_ll'])}, IFEval {num(row['ifeval_inst_strict'])} "
                     f"({format_ci(row['ifeval_change'], change, signed=True)}), drift KL {num(row['drift_kl'])}")
    points = [r["frontier"] for r in rows[1:] if r.get("frontier") is not None]
    lines += ["", format_budget_markdown(best_at_budgets(points, BUDGETS), domain_metric=metric,
                                         skill="IFEval inst_strict").rstrip("\n"),
              "", "`frontier.png` draws each method's runs as domain score vs IFEval change, with these intervals."]
    return "\n".join(lines) + "\n"


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
    if done:
        log(f"[reproduce] resuming: {len(done)} run(s) already trained and evaluated are kept, the others run")
    outcome = run_sweep(sweep)
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
