"""Sentence segmenters compared: boundary precision / recall on the labelled sets, speed per document.

    python bench/bench_segmentation.py                 # candidates that are installed
    PYTHONPATH=/tmp/segpkgs python bench/bench_segmentation.py   # with pysbd installed outside the lock

Labelled sets (``tests/data/segmentation_*.jsonl``): each record's ``marked`` text has ``¦`` where a
sentence boundary is; the boundary is the first non-space character after it. ``gold`` was used to
design the rules of :mod:`disc_ray.segmentation`; ``heldout`` was written afterwards and not tuned on.
A predicted boundary is the first non-space character of every sentence but the first. Speed: ms per
BioASQ passage (208 passages, ~1,470 characters), best of 3, next to the tokenizer on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizer reference runs on one core, as the segmenter does

REPO = Path(__file__).resolve().parents[1]
SETS = {"gold": REPO / "tests" / "data" / "segmentation_gold.jsonl", "heldout": REPO / "tests" / "data" / "segmentation_heldout.jsonl"}
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
MARK = "¦"


def load_labelled(path: Path) -> list[tuple[str, str, set[int]]]:
    """``(category, text, gold boundary positions)`` per record of a labelled set."""
    records = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        record = json.loads(line)
        text, boundaries = "", set()
        for number, part in enumerate(record["marked"].split(MARK)):
            if number:
                boundaries.add(len(text) + len(part) - len(part.lstrip()))
            text += part
        records.append((record["category"], text, boundaries))
    return records


def predicted_boundaries(text: str, spans) -> set[int]:
    first = len(text) - len(text.lstrip())
    found = set()
    for start, end in spans:
        while start < end and text[start].isspace():
            start += 1
        if start < end and start != first:
            found.add(start)
    return found


def score(segment, records) -> dict:
    """Micro precision / recall over all boundaries, and per category."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for category, text, gold in records:
        found = predicted_boundaries(text, segment(text))
        for key in ("all", category):
            totals[key][0] += len(found & gold)
            totals[key][1] += len(found - gold)
            totals[key][2] += len(gold - found)
    return {key: {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "boundaries": tp + fn}
            for key, (tp, fp, fn) in totals.items()}


def candidates() -> dict:
    import blingfire
    import punkt

    from disc_ray.segmentation import segment_sentences

    found = {"blingfire (before)": lambda t: blingfire.text_to_sentences_and_offsets(t)[1] if t.strip() else []}
    plain = punkt.tokenizer_for("english")
    lines = punkt.tokenizer_for("english", prefixes=True, line_breaks="always")
    found["punkt english"] = lambda t: list(plain.span_tokenize(t))
    found["punkt english + prefixes + line breaks"] = lambda t: list(lines.span_tokenize(t))
    try:
        import pysbd

        segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)
        found["pysbd 0.3.4"] = lambda t: [(s.start, s.end) for s in segmenter.segment(t)]
    except ImportError:
        pass
    found["disc_ray.segmentation (chosen)"] = segment_sentences
    return found


def best_time(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    from disc_ray.models import embedded_default_dir, load_tokenizer
    from disc_ray.records import load_jsonl

    labelled = {name: load_labelled(path) for name, path in SETS.items()}
    passages = [row["meta"]["context"] for row in load_jsonl(BIOASQ)]
    tokenizer = load_tokenizer(str(embedded_default_dir()))
    token_ms = best_time(lambda: tokenizer.backend_tokenizer.encode_batch_fast(passages)) / len(passages) * 1e3
    figures = {"tokenizer_ms_per_document": token_ms, "candidates": {}}
    print(f"{len(passages)} BioASQ passages; tokenizer (1 thread): {token_ms:.3f} ms per document")
    print(f"{'candidate':40s} {'gold P':>7s} {'gold R':>7s} {'held P':>7s} {'held R':>7s} {'ms/doc':>7s} {'x tok':>6s}")
    for name, segment in candidates().items():
        scores = {set_name: score(segment, records) for set_name, records in labelled.items()}
        ms = best_time(lambda: [segment(p) for p in passages]) / len(passages) * 1e3
        figures["candidates"][name] = {"scores": scores, "ms_per_document": ms}
        g, h = scores["gold"]["all"], scores["heldout"]["all"]
        print(f"{name:40s} {g['precision']:7.3f} {g['recall']:7.3f} {h['precision']:7.3f} {h['recall']:7.3f} {ms:7.3f} {ms / token_ms:6.2f}")
        weak = [f"{c} {v['precision']:.2f}/{v['recall']:.2f}" for c, v in scores["gold"].items() if c != "all" and min(v["precision"], v["recall"]) < 0.9]
        if weak:
            print(f"{'':40s} gold P/R below 0.9: {', '.join(weak)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
