"""Corpora and evaluation files as people really have them (issue 17): the shared case files through the
readers (no Ray), through ``disc-ray data inspect`` (Ray) and through the evaluation loader."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from disc_ray.data import DataConfig, plan_corpus, read_units
from disc_ray.data import _plan_read_units
from disc_ray.records import RecordFileError, iter_jsonl_lines, read_json_records, read_jsonl

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / ".." / "shared" / "cases"
CORPUS, EVAL = CASES / "corpus", CASES / "eval"


def _read(cfg: DataConfig) -> list[dict]:
    """Every READ_SCHEMA row the readers produce for ``cfg`` (in-process, as a Ray task would)."""
    plan = plan_corpus(cfg)
    units = pa.Table.from_pylist(_plan_read_units(plan, 2))
    blocks = read_units(units, fmt=plan.format, text_field=cfg.text_field, batch_rows=512, strict=cfg.strict,
                        records_key=cfg.records_key)
    return [row for block in blocks for row in block.to_pylist()]


# --------------------------------------------------------------------------- readers (no Ray)


@pytest.mark.core
def test_json_array_file_is_read_as_records():
    rows = _read(DataConfig(path=str(CORPUS / "records_array.json")))
    assert [r["reason"] for r in rows] == ["", ""]
    assert [r["row"] for r in rows] == [0, 1] and all(r["line"] is None for r in rows)
    assert rows[0]["text"].startswith("Corven lake") and rows[1]["text"].startswith("The Ulvar line")


@pytest.mark.core
@pytest.mark.parametrize("key, layout", [(None, {"data": "records"}), ("docs", {"docs": "records", "tags": ["a"]}),
                                         (None, "jsonl_named_json"), (None, "single_record")])
def test_json_object_with_records_and_json_lines_named_json(tmp_path, key, layout):
    records = [{"text": "First one. Two."}, {"text": "Second one. Two."}, 7]
    path = tmp_path / "corpus.json"
    if layout == "jsonl_named_json":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif layout == "single_record":
        records = [{"text": "Only this. Record.", "tags": ["x", "y"]}]
        path.write_text(json.dumps(records[0]))
    else:
        path.write_text(json.dumps({**{k: (records if v == "records" else v) for k, v in layout.items()}, "version": 2}))
    rows = _read(DataConfig(path=str(path), records_key=key))
    assert [r["text"] for r in rows] == [r["text"] if isinstance(r, dict) else None for r in records]
    assert [r["reason"] for r in rows][-1] == ("not_object" if len(records) == 3 else "")


@pytest.mark.core
def test_json_object_with_several_lists_asks_for_the_key(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps({"a": [{"text": "x"}], "b": [{"text": "y"}]}))
    with pytest.raises(RecordFileError, match="several lists .*records_key"):
        read_json_records(path)
    rows = _read(DataConfig(path=str(path)))
    assert len(rows) == 1 and rows[0]["reason"] == "malformed_json" and "records_key" in rows[0]["detail"]
    assert [r["text"] for r in _read(DataConfig(path=str(path), records_key="b"))] == ["y"]


@pytest.mark.core
@pytest.mark.parametrize("arrow_type", ["dictionary", "large_string", "string_view"])
def test_every_string_column_type_is_text(tmp_path, arrow_type):
    if arrow_type == "dictionary":
        path = CORPUS / "dictionary_text.parquet"
        assert pa.types.is_dictionary(pq.read_schema(path).field("text").type)
    else:
        path = tmp_path / f"{arrow_type}.parquet"
        kind = pa.large_string() if arrow_type == "large_string" else pa.string_view()
        pq.write_table(pa.table({"text": pa.array(["A first one. A second one.", None], kind)}), path)
    rows = _read(DataConfig(path=str(path)))
    texts = pq.read_table(path).column("text").to_pylist()
    assert [r["text"] for r in rows] == texts
    assert [r["reason"] for r in rows] == ["" if t is not None else "missing_field" for t in texts]


@pytest.mark.core
def test_json_lines_split_on_newline_only(tmp_path):
    path = EVAL / "mcq_line_separators.jsonl"
    raw = path.read_bytes()
    assert "\u2028".encode() in raw and "\u0085".encode() in raw  # the case holds the separators raw
    lines = list(iter_jsonl_lines(path))
    assert len(lines) == raw.count(b"\n") == 2
    rows = _read(DataConfig(path=str(path), text_field="question"))
    assert [r["line"] for r in rows] == [1, 2] and all(not r["reason"] for r in rows)
    assert "\u2028" in rows[0]["text"] and "\u0085" in rows[1]["text"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "x\u2028y"}\n{broken\n')
    with pytest.raises(RecordFileError, match=r"bad.jsonl:2: malformed row, not valid JSON"):
        read_jsonl(bad)


@pytest.mark.core
def test_evaluation_loader_reads_line_separators():
    from disc_ray.evaluation.data import load_mcq

    items = load_mcq(EVAL / "mcq_line_separators.jsonl")
    assert len(items) == 2 and "\u2028" in items[0].question and "\u0085" in items[1].question
    assert [item.correct_index for item in items] == [0, 0] and len(items[0].options) == 4


def _inspect(capsys, *args) -> str:
    from disc_ray.cli import main

    assert main(["data", "inspect", *map(str, args), "--samples", "1"]) == 0
    return capsys.readouterr().out


@pytest.mark.core
def test_inspect_of_a_small_corpus_runs_in_process_and_keeps_processed_rows(capsys, tmp_path):
    """A corpus under the size threshold is inspected without starting Ray (a core test that started Ray fails);
    inspecting the processed rows it kept reads them back and leaves them in place."""
    from disc_ray.data.inspect import IN_PROCESS_MAX_BYTES

    assert (CORPUS / "dictionary_text.parquet").stat().st_size < IN_PROCESS_MAX_BYTES
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # not in this file's order (tests below)
    printed = _inspect(capsys, CORPUS / "dictionary_text.parquet", "--data.output_dir", tmp_path / "out")
    assert "read 3 records, kept 2 documents, dropped 1" in printed and "duplicate 1" in printed and "split [" in printed
    assert ray_was_up or "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    again = _inspect(capsys, tmp_path / "out")
    assert "kept 2 documents, dropped 1" in again and (tmp_path / "out" / "status=kept").is_dir()


# --------------------------------------------------------------------------- disc-ray data inspect (Ray)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def _without_seconds(printed: str) -> str:
    return re.sub(r"\(\d+\.\d+ s\)", "(s)", printed)


@pytest.mark.ray
def test_inspect_reads_the_case_files_on_ray_as_in_process(ray_session, capsys):
    """On Ray (``--ray``) and in process (``--no-ray``) the same counts, rejects, splits and samples are printed."""
    cases = [(CORPUS / "records_array.json",), (CORPUS / "dictionary_text.parquet",),
             (EVAL / "mcq_line_separators.jsonl", "--data.text_field", "question", "--split.strategy", "token_random")]
    printed = [_inspect(capsys, *case, "--ray") for case in cases]
    assert "read 2 records, kept 2 documents, dropped 0" in printed[0]
    assert "read 3 records, kept 2 documents, dropped 1" in printed[1] and "duplicate 1" in printed[1]
    assert "read 2 records, kept 2 documents, dropped 0" in printed[2]
    assert all("split [" in text for text in printed)
    assert [_without_seconds(_inspect(capsys, *case, "--no-ray")) for case in cases] == list(map(_without_seconds, printed))


@pytest.mark.ray
def test_lowercase_special_token_text_and_fallback_through_the_pipeline(ray_session, tokenizer, tmp_path):
    """The case files train: lowercase text has its four sentences, special-token strings stay text (identical
    rows in the core and the pipeline, no control ids), a document without any boundary falls back to token
    windows; the report counts the last two."""
    from disc_ray.data import build_training_dataset, clean_text, process_corpus
    from disc_ray.records import load_jsonl
    from disc_ray.splits import SplitConfig, prepare_document

    no_boundary = " ".join(["and then we talked about the weather for a while"] * 12)  # ~120 tokens, no stop at all
    texts = [row["text"] for row in load_jsonl(CORPUS / "lowercase.jsonl") + load_jsonl(CORPUS / "special_token_text.jsonl")]
    texts.append(no_boundary)
    corpus = tmp_path / "cases.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    split_cfg = SplitConfig(num_splits=3, seed=1)
    dataset, report = build_training_dataset(DataConfig(path=str(corpus), output_dir=str(tmp_path / "out")), split_cfg)
    assert report.records_read == 4 and report.documents_kept == 4 and report.dropped == {}
    local = process_corpus(DataConfig(path=str(corpus), output_dir=str(tmp_path / "local")), split_cfg, in_process=True)
    differs = ("seconds", "output_dir", "rejects_path")
    assert {k: v for k, v in local.to_dict().items() if k not in differs} == {k: v for k, v in report.to_dict().items() if k not in differs}
    local_rows = pq.read_table(tmp_path / "local" / "status=kept").to_pylist()
    assert sorted((r["row"], r["input_ids"], r["split_starts"], r["split_ends"]) for r in local_rows) == sorted(
        (r["row"], list(r["input_ids"]), list(r["split_starts"]), list(r["split_ends"])) for r in dataset.take_all())
    assert report.special_token_text == 1 and report.token_window_fallback == 1
    assert "1 documents hold special-token text" in report.format()
    rows = {row["row"]: row for row in dataset.take_all()}
    special = set(tokenizer.all_special_ids)
    for number, text in enumerate(texts):
        (expected,) = prepare_document(clean_text(text)[0], tokenizer, split_cfg)
        row = rows[number]
        assert list(row["input_ids"]) == expected.input_ids
        assert list(zip(row["split_starts"], row["split_ends"])) == expected.split_spans
        assert not special & set(expected.input_ids[expected.num_special_prefix:])  # never a control id from the text
    (lowercase,) = prepare_document(texts[0], tokenizer, split_cfg)
    assert len(lowercase.sentence_spans) == 4 and len(lowercase.split_spans) == 3
    (windows,) = prepare_document(no_boundary, tokenizer, split_cfg)
    assert windows.segmentation == "token_windows" and len(windows.sentence_spans) >= 3
    decoded = tokenizer.decode(rows[2]["input_ids"])
    assert "<|im_end|>" in decoded and "<|endoftext|>" in decoded
