"""Where each configuration's IFEval change comes from: instruction-level strict accuracy per instruction family
(lm-eval's `family:instruction` ids), change vs the original, seeds averaged, from the runs' eval.json files; then
each run's responses (eval/samples/ifeval.jsonl): median length, looping answers, postscripts.
Counts are small (3-22 instructions a family on 64 prompts): a pointer to where to look, not a finding.
Run from the repository root after `python jobs/reproduce.py --preset full`:
    .venv/bin/python docs/reproduction/full-2026-11-30-part3/ifeval_families.py"""
import collections
import json
from pathlib import Path

EXPERIMENT = Path.home() / "disc-ray-reproduce" / "reproduce-full"
baseline = json.loads((EXPERIMENT / "baseline" / "eval.json").read_text())["suites"]["ifeval"]
prompts = set(baseline["per_item"]["ids"])
counts = collections.Counter()
for line in (Path(baseline["data"]) if Path(baseline["data"]).exists() else Path("../shared/data/ifeval/input_data.jsonl")).open():
    record = json.loads(line)
    if str(record["key"]) in prompts:
        counts.update(i.split(":")[0] for i in record["instruction_id_list"])

runs: dict[tuple, list] = collections.defaultdict(list)
for trial in sorted(p for p in EXPERIMENT.glob("trial_*") if p.is_dir()):
    params = json.loads((trial / "params.json").read_text())
    path = EXPERIMENT / "runs" / trial.name / "model" / "eval" / "eval.json"
    if path.exists():
        runs[(params["objective.name"], params["train.lr"])].append(json.loads(path.read_text())["suites"]["ifeval"])

original = baseline["inst_strict_by_family"]
configs = sorted(runs, key=lambda k: (("ft", "ft_kl", "disc").index(k[0]), k[1]))
print("| family | instructions | original | " + " | ".join(f"{m} {lr:.0e} ({len(runs[(m, lr)])})" for m, lr in configs) + " |")
print("|---" * (3 + len(configs)) + "|")
for family in sorted(original):
    changes = [sum(r["inst_strict_by_family"][family] for r in runs[c]) / len(runs[c]) - original[family] for c in configs]
    print(f"| {family} | {counts[family]} | {original[family]:.1f} | " + " | ".join(f"{d:+.1f}" for d in changes) + " |")
print(f"| all | {sum(counts.values())} | {baseline['inst_strict']:.1f} | "
      + " | ".join(f"{sum(r['inst_strict'] for r in runs[c]) / len(runs[c]) - baseline['inst_strict']:+.2f}" for c in configs) + " |")

# The responses themselves (eval/samples/ifeval.jsonl): median length, answers that loop (some 6-word sequence
# three times or more), answers with a "P.S." (asked for by the postscript instructions).
def response_stats(path: Path) -> tuple:
    records = [json.loads(line) for line in path.open()]

    def loops(text: str) -> bool:
        words = text.split()
        grams = collections.Counter(tuple(words[i:i + 6]) for i in range(len(words) - 5))
        return bool(grams) and grams.most_common(1)[0][1] >= 3

    lengths = sorted(len(r["response"]) for r in records)
    return lengths[len(lengths) // 2], sum(loops(r["response"]) for r in records), sum("P.S" in r["response"] for r in records)


print("\n| run | seed | median characters | looping answers | answers with P.S. |\n|---|---|---|---|---|")
print("| original | - | %d | %d | %d |" % response_stats(EXPERIMENT / "baseline" / "samples" / "ifeval.jsonl"))
for trial in sorted(p for p in EXPERIMENT.glob("trial_*") if p.is_dir()):
    params = json.loads((trial / "params.json").read_text())
    path = EXPERIMENT / "runs" / trial.name / "model" / "eval" / "samples" / "ifeval.jsonl"
    if path.exists():
        print(f"| {params['objective.name']} {params['train.lr']:.0e} | {params.get('train.seed')} | "
              + "%d | %d | %d |" % response_stats(path))
