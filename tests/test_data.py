"""The Ray Data corpus pipeline: readers, cleaning, dedupe, rows identical to the core's, bad input, streaming, shards, CLI."""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from disc_ray import data as data_module
from disc_ray.records import load_jsonl
from disc_ray.data import (
    DataConfig,
    DataError,
    build_training_dataset,
    clean_text,
    plan_corpus,
    prepare_documents,
    rows_to_examples,
    split_equal_shards,
)
from disc_ray.splits import STRATEGIES, DocumentSkipped, SplitConfig, prepare_document
from disc_ray import tokenization
from disc_ray.tokenization import ByteLevelTokens, tokenize_documents

REPO = Path(__file__).resolve().parents[1]
BIOASQ = REPO / ".." / "shared" / "data" / "bioasq_mcq" / "bioasq_mcq_hardest_full.jsonl"
OBJECT_STORE_BYTES = 80 * 1024 * 1024

ADVERSARIAL = [
    "héllo wörld. Ça va?  日本語の文です。次の文。 😀 emoji here.\n\n\tEnd of it.",
    "   \u3000 Lead space. Then\u00a0nbsp here.  And   more.\x00 Nul byte. Ok then.",
    "A. B. C.\n\n\nD is last.",
    "Tabs\tand\u2028line sep. Second one here! Third? Fourth.",
    "Dr. Smith went to Washington. He arrived at 5 p.m. sharp. The end.",
    "One sentence only.",
    "x",
]


def _passages() -> list[str]:
    return [row["meta"]["context"] for row in load_jsonl(BIOASQ)]


def _rows(dataset) -> list[tuple]:
    """All rows of a training dataset, sorted, as comparable tuples."""
    table = pa.concat_tables([pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
                              for b in dataset.iter_batches(batch_size=None, batch_format="pyarrow")])
    columns = ["doc_id", "example_index", "source", "row", "input_ids", "split_starts", "split_ends", "num_special_prefix", "num_tokens"]
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in zip(*(table.column(c).to_pylist() for c in columns)))


def _rejects(report) -> list[dict]:
    return load_jsonl(report.rejects_path)


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- config and pure functions (no Ray)


@pytest.mark.parametrize("kwargs, key", [
    ({"format": "csv"}, "data.format"),
    ({"normalize_unicode": "NFX"}, "data.normalize_unicode"),
    ({"min_chars": 10, "max_chars": 5}, "data.min_chars"),
    ({"max_length": 4}, "data.max_length"),
    ({"text_field": "meta..context"}, "data.text_field"),
    ({"concurrency": 0}, "data.concurrency"),
    ({"num_cpus_per_worker": 0}, "data.num_cpus_per_worker"),
    ({"batch_rows": 0}, "data.batch_rows"),
])
def test_config_errors_name_the_field(kwargs, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        DataConfig(path="x.jsonl", **kwargs)


def test_whitespace_table_covers_every_whitespace_code_point():
    assert not any(chr(c).isspace() for c in range(len(tokenization._WHITESPACE), sys.maxunicode + 1))


def _fields(examples) -> list[tuple]:
    return [(e.input_ids, e.sentence_spans, e.split_spans, e.num_special_prefix, e.segmentation, e.special_token_text) for e in examples]


def _assert_batched_is_the_core(texts: list, tokenizer, cfg: SplitConfig, max_length: int = 2048, with_splits: bool = True):
    """prepare_documents (the pipeline, batched) gives, text by text, exactly what splits.prepare_document (the
    core, a batch of one) gives, and the tokenizer's offsets give the same sentence spans as the offset-free path."""
    for text, got in zip(texts, prepare_documents(texts, tokenizer, cfg, max_length, with_splits)):
        (by_offsets,) = tokenize_documents([text], tokenizer, max_length, use_offsets=True)
        try:
            expected = prepare_document(text, tokenizer, cfg, max_length, with_splits)
        except DocumentSkipped as skipped:
            assert isinstance(got, DocumentSkipped) and got.reason == skipped.reason, (repr(text), got)
            continue
        assert not isinstance(got, DocumentSkipped), (repr(text), got)
        assert _fields(got) == _fields(expected), repr(text)
        assert [(e.input_ids, e.sentence_spans, e.segmentation) for e in by_offsets] == \
               [(e.input_ids, e.sentence_spans, e.segmentation) for e in tokenize_documents([text], tokenizer, max_length)[0]], repr(text)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_batched_preparation_gives_the_cores_examples(tokenizer, strategy):
    """The pipeline's batched path must produce exactly what splits.prepare_document produces."""
    texts = _passages()[:40] + ADVERSARIAL + [None, "", "  \n "]
    cfg = SplitConfig(strategy=strategy, seed=7, suffix_tokens=8)
    for max_length, with_splits in ((2048, True), (48, True), (48, False)):
        _assert_batched_is_the_core(texts, tokenizer, cfg, max_length, with_splits)


def _tokenizer_variant(tokenizer, variant: str):
    """The embedded tokenizer rebuilt with one change, to exercise both preparation paths."""
    from tokenizers import AddedToken, Tokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    if variant == "nfc_normalizer":  # not plain byte-level: every document takes the offsets path
        backend.normalizer = normalizers.NFC()
    elif variant == "bos_and_eos":  # the post-processor adds a special token on each side
        eos = backend.token_to_id("<|endoftext|>")
        backend.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    elif variant == "lstrip_added_token":  # an added token that swallows the space before it: those documents do not add up
        backend.add_tokens([AddedToken("<sep>", lstrip=True)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.mark.parametrize("variant, byte_level", [("as_shipped", True), ("bos_and_eos", True), ("lstrip_added_token", True),
                                                 ("nfc_normalizer", False)])
def test_offset_free_path_matches_the_core_or_steps_aside(tokenizer, variant, byte_level):
    """Byte-level tokenizers skip the tokenizer's offsets (token lengths give them); anything else, and any
    document whose token lengths do not add up to its bytes, takes the offsets path: same rows either way."""
    tok = tokenizer if variant == "as_shipped" else _tokenizer_variant(tokenizer, variant)
    table = ByteLevelTokens.of(tok)
    assert (table is not None) == byte_level
    if variant == "bos_and_eos":
        assert (table.prefix, table.suffix) == (1, 1)
    texts = _passages()[:20] + ADVERSARIAL + ["First part here. <sep> Second part follows.", "Chat tokens <|im_end|> inside. Fine."]
    if table is not None:
        valid = [t for t in texts if t.strip()]
        exact, _, _ = table.char_offsets(valid, [e.ids for e in tok.backend_tokenizer.encode_batch_fast(valid)])
        assert (len(exact) < len(valid)) == (variant == "lstrip_added_token")  # the <sep> document steps aside
    cfg = SplitConfig(seed=5)
    _assert_batched_is_the_core(texts, tok, cfg, 64)
    padded = _tokenizer_variant(tokenizer, "as_shipped")
    padded.backend_tokenizer.enable_padding(length=4096)  # a caller's padding left on: the offsets path, unpadded rows
    assert tokenization._byte_level_tokens(padded) is None
    assert [e.input_ids for e in prepare_documents(texts[:1], padded, cfg)[0]] == [e.input_ids for e in prepare_document(texts[0], tokenizer, cfg)]


def test_fuzzed_text_gives_the_cores_rows(tokenizer):
    """Random mixes of multi-byte characters, odd whitespace and special-token strings: the batched path's
    token -> sentence mapping (from token byte lengths) equals the core's (from the tokenizer's offsets)."""
    rng = random.Random(0)
    pieces = ["Hello", " world", ".", " ", "  ", "\n", "\n\n", "\t", "\u3000", "\u00a0", "\u2028", "é", "日本", "。", "😀", "<|im_end|>",
              "Dr.", " A.", "e\u0301", "1.5", " 42", "!", "?", "\x00", "\u200b", "Ω", "—", "'s", "\r", "\x1c", "ﬁ"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(400)]
    _assert_batched_is_the_core(texts, tokenizer, SplitConfig(seed=3))


def test_prepare_block_works_through_a_coalesced_block_in_batches(embedded_dir, tmp_path):
    """Ray Data hands the fused stage whole files as one block; prepare_block cuts it into batch_rows
    pieces (faster per token) and the rows are the same as in one piece."""
    import dataclasses

    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": p} for p in _passages()[:30]] + ["not json", {"text": "One sentence."}])
    unit = pa.table({"path": [str(path)], "file_index": [0], "stripe": [0], "stripes": [1]})
    block = pa.concat_tables(list(data_module.read_units(unit, fmt="jsonl", text_field="text", batch_rows=1000, strict=False)))
    cleaned = data_module.clean_block(block, normalize_unicode="NFKC", collapse_whitespace=True, min_chars=1, max_chars=10**6,
                                      strict=False, line_based=True)
    kwargs = dict(tokenizer_source=str(embedded_dir), split=dataclasses.asdict(SplitConfig()), max_length=2048, with_splits=True,
                  strict=False, line_based=True, threads=1)
    in_pieces, whole = data_module.prepare_block(cleaned, batch_rows=7, **kwargs), data_module.prepare_block(cleaned, batch_rows=512, **kwargs)
    assert len(in_pieces) == len(cleaned) == 32 and in_pieces.equals(whole)
    assert in_pieces.column("reason").to_pylist().count("") == 30


def _clean_text_slowly(text: str) -> str:
    """The cleaning rules applied unconditionally (clean_text skips work for tidy ASCII text)."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[^\S\n]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def test_cleaning_rules():
    assert clean_text("ﬁne Ｆｕｌｌ width ①") == ("fine Full width 1", True, False)
    assert clean_text("  a \t b\r\n\n\n\nc  \n d ") == ("a b\n\nc\nd", False, True)
    assert clean_text("tidy text. Nothing to do.") == ("tidy text. Nothing to do.", False, False)
    assert clean_text("ﬁ  x", "none", False) == ("ﬁ  x", False, False)
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\t", "\n", "\r", "\x0b", "\x1f", ".", "\u00a0", "é", "\u2028", "\u3000", "\x85", "日"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert clean_text(text)[0] == _clean_text_slowly(text), repr(text)


# --------------------------------------------------------------------------- real data


@pytest.mark.ray
def test_bioasq_rows_are_what_the_objective_expects(ray_session, tokenizer, tmp_path):
    from disc_ray.objectives import pack_disc_batch

    passages = _passages()
    split_cfg = SplitConfig(num_splits=4, seed=3)
    cfg = DataConfig(path=str(BIOASQ), text_field="meta.context", output_dir=str(tmp_path / "out"))
    dataset, report = build_training_dataset(cfg, split_cfg)

    assert report.corpus_format == "jsonl" and report.records_read == len(passages) == 208
    assert report.documents_kept + report.documents_dropped == report.records_read
    assert report.documents_kept == len(set(passages)) - report.dropped.get("single_sentence", 0)
    assert set(report.dropped) <= {"duplicate", "single_sentence"}
    schema = dataset.schema().base_schema
    for column in ("input_ids", "split_starts", "split_ends"):
        assert schema.field(column).type == pa.list_(pa.int32())
    assert schema.field("num_special_prefix").type == pa.int32()

    rows = _rows(dataset)
    assert len(rows) == report.examples and sum(r[-1] for r in rows) == report.tokens
    for doc_id, index, source, row, input_ids, starts, ends, prefix, num_tokens in rows:
        expected = prepare_document(clean_text(passages[row])[0], tokenizer, split_cfg, cfg.max_length)[index]
        assert Path(source).resolve() == BIOASQ.resolve()
        assert list(input_ids) == expected.input_ids and list(zip(starts, ends)) == expected.split_spans
        assert prefix == expected.num_special_prefix and num_tokens == len(expected.input_ids)
    assert report.splits == sum(len(r[5]) for r in rows)

    batch = next(iter(dataset.iter_batches(batch_size=4, batch_format="numpy")))
    examples = rows_to_examples(batch)
    assert len(examples) == 4 and all(e.split_spans for e in examples)
    packed = pack_disc_batch(examples)
    assert packed.student_input_ids.shape[1] == sum(e - s for ex in examples for s, e in ex.split_spans)
    arrow_batch = pa.table({name: pa.array([list(v) if hasattr(v, "__len__") else v for v in values])
                            for name, values in batch.items() if name in ("input_ids", "split_starts", "split_ends", "num_special_prefix")})
    assert [(e.input_ids, e.split_spans) for e in rows_to_examples(arrow_batch)] == [(e.input_ids, e.split_spans) for e in examples]


@pytest.mark.ray
def test_rows_do_not_depend_on_block_order_or_worker_count(ray_session, tmp_path, monkeypatch):
    passages = _passages()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_jsonl(corpus / "a.jsonl", [{"text": p} for p in passages[:60]])
    _write_jsonl(corpus / "b.jsonl", [{"text": p} for p in passages[60:120] + passages[:5]])  # 5 duplicates of a.jsonl
    _write_jsonl(corpus / "c.jsonl", [{"text": p} for p in passages[120:]])
    monkeypatch.setattr(data_module.sources, "_STRIPE_BYTES", 4096)  # files are read by several tasks (every n-th line)
    runs = []
    for concurrency, batch_rows in ((1, 7), (2, 512)):
        cfg = DataConfig(path=str(corpus), concurrency=concurrency, batch_rows=batch_rows, output_dir=str(tmp_path / f"out{concurrency}"))
        dataset, report = build_training_dataset(cfg, SplitConfig(strategy="token_random", seed=11))
        runs.append((_rows(dataset), sorted((r["path"], r["row"], r["reason"], r["detail"]) for r in _rejects(report)), report))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]
    duplicates = [r for r in runs[0][1] if r[2] == "duplicate"]
    assert [(Path(p).name, row) for p, row, _, _ in duplicates] == [("b.jsonl", 60 + i) for i in range(5)]
    assert all(detail == f"same text as {corpus / 'a.jsonl'}:{i + 1}" for i, (*_, detail) in enumerate(duplicates))
    assert runs[0][2].dropped == runs[1][2].dropped == {"duplicate": 5}
    previews = sorted(r["preview"] for r in _rejects(runs[0][2]) if r["reason"] == "duplicate")
    assert previews == sorted(data_module.readers._preview(p) for p in passages[:5])  # decoded from the rows' tokens
    kept_sources = {(Path(r[2]).name, r[3]) for r in runs[0][0]}
    assert ("a.jsonl", 0) in kept_sources and ("b.jsonl", 60) not in kept_sources


# --------------------------------------------------------------------------- bad input


@pytest.mark.ray
def test_every_bad_record_is_counted_and_written_to_rejects(ray_session, tmp_path):
    passages = _passages()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    huge = "This sentence is repeated to make a very large document. " * 180_000  # ~10 MB on one line
    lines = [
        json.dumps({"text": passages[0]}),                      # 1 kept
        '{"text": "unterminated',                               # 2 malformed_json
        json.dumps({"body": passages[1]}),                      # 3 missing_field
        json.dumps({"text": None}),                             # 4 missing_field (null)
        json.dumps({"text": 42}),                               # 5 not_text
        json.dumps(["a", "list"]),                              # 6 not_object
        json.dumps({"text": ""}),                               # 7 empty
        json.dumps({"text": " \n\t  "}),                        # 8 empty (whitespace only)
        json.dumps({"text": "Just one sentence here."}),        # 9 single_sentence
        json.dumps({"text": passages[0]}),                      # 10 duplicate of line 1
        json.dumps({"text": huge}),                             # 11 above_max_chars
        '{"text": "Lone \\ud800 surrogate. Second sentence."}',  # 12 invalid_unicode
        "",                                                     # 13 blank_line
        json.dumps({"text": passages[2]}),                      # 14 kept
    ]
    bad = corpus / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with (corpus / "bytes.jsonl").open("wb") as f:          # invalid UTF-8 on line 2
        f.write(json.dumps({"text": passages[3]}).encode() + b"\n" + b'{"text": "caf\xe9 au lait. Second one."}\n')
    (corpus / "empty.jsonl").write_text("")
    long_doc = " ".join(passages[:30])                          # kept, cut into windows
    _write_jsonl(corpus / "long.jsonl", [{"text": long_doc}])

    cfg = DataConfig(path=str(corpus), max_length=128, output_dir=str(tmp_path / "out"))
    dataset, report = build_training_dataset(cfg, SplitConfig())

    assert report.dropped == {"above_max_chars": 1, "blank_line": 1, "duplicate": 1, "empty": 2, "empty_file": 1, "invalid_unicode": 1,
                              "invalid_utf8": 1, "malformed_json": 1, "missing_field": 2, "not_object": 1, "not_text": 1,
                              "single_sentence": 1}
    assert report.records_read == len(lines) + 2 + 1 + 1 == report.documents_kept + report.documents_dropped
    assert report.documents_kept == 4
    rejects = {(Path(r["path"]).name, r["line"]): r for r in _rejects(report)}
    assert {k: r["reason"] for k, r in rejects.items() if k[0] == "bad.jsonl"} == {
        ("bad.jsonl", 2): "malformed_json", ("bad.jsonl", 3): "missing_field", ("bad.jsonl", 4): "missing_field",
        ("bad.jsonl", 5): "not_text", ("bad.jsonl", 6): "not_object", ("bad.jsonl", 7): "empty", ("bad.jsonl", 8): "empty",
        ("bad.jsonl", 9): "single_sentence", ("bad.jsonl", 10): "duplicate", ("bad.jsonl", 11): "above_max_chars",
        ("bad.jsonl", 12): "invalid_unicode", ("bad.jsonl", 13): "blank_line"}
    assert rejects[("bytes.jsonl", 2)]["reason"] == "invalid_utf8" and "0xe9" in rejects[("bytes.jsonl", 2)]["detail"]
    assert rejects[("empty.jsonl", None)]["reason"] == "empty_file"
    assert "keys" not in rejects[("bad.jsonl", 3)]["detail"] or "body" in rejects[("bad.jsonl", 3)]["detail"]
    assert len(rejects[("bad.jsonl", 11)]["preview"]) <= 120
    # the long document became several windows, each within max_length, covering the whole document
    windows = [r for r in _rows(dataset) if Path(r[2]).name == "long.jsonl"]
    assert len(windows) > 3 and all(r[-1] <= 128 for r in windows)
    assert [r[1] for r in windows] == list(range(len(windows)))


@pytest.mark.ray
@pytest.mark.parametrize("case", ["malformed_json", "single_sentence", "parquet_null"])
def test_strict_turns_a_skip_into_a_one_line_error(ray_session, tmp_path, case):
    passages = _passages()
    if case == "parquet_null":
        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"text": [passages[0], None, passages[1]]}), path)
        expected = f"{path} row 1: missing_field: "
    else:
        path = tmp_path / "docs.jsonl"
        bad_line = '{"text": oops}' if case == "malformed_json" else json.dumps({"text": "Only one sentence."})
        _write_jsonl(path, [{"text": passages[0]}, {"text": passages[1]}, bad_line])
        expected = f"{path}:3: {case}: "
    with pytest.raises(DataError) as caught:
        build_training_dataset(DataConfig(path=str(path), strict=True, output_dir=str(tmp_path / "out")), SplitConfig())
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message and "Traceback" not in message


def test_corpus_level_errors_are_raised_on_the_driver(tmp_path, monkeypatch):
    def error(**kwargs) -> str:
        with pytest.raises(DataError) as caught:
            plan_corpus(DataConfig(**kwargs))
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert error(path=str(tmp_path / "missing.jsonl")) == f"data.path: {tmp_path / 'missing.jsonl'} does not exist"
    assert "no files match" in error(path=str(tmp_path / "*.parquet"))
    (tmp_path / "empty_dir").mkdir()
    assert "holds no" in error(path=str(tmp_path / "empty_dir"), format="jsonl")
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"body": ["a. b."], "n": [1]}), wrong)
    assert error(path=str(wrong)) == f"{wrong}: data.text_field 'text' is not a column (columns: body, n)"
    assert error(path=str(wrong), text_field="n") == f"{wrong}: data.text_field 'n' has type int64, expected a string column"
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"meta": [{"title": "t"}]}), nested)
    assert "no field 'context'" in error(path=str(nested), text_field="meta.context")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet")
    assert error(path=str(garbage)).startswith(f"{garbage}: not a readable Parquet file")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text("{}\n")
    pq.write_table(pa.table({"text": ["x"]}), mixed / "b.parquet")
    assert "cannot tell the format" in error(path=str(mixed))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "cannot be loaded as a hub dataset" in error(path="nobody/no-such-dataset", format="hub")
    assert "cannot be loaded as a hub dataset" in error(path="nobody/no-such-dataset")  # auto: org/name that is not local


# --------------------------------------------------------------------------- formats


def _write_format(fmt: str, root: Path, passages: list[str]) -> DataConfig:
    if fmt == "jsonl.gz":
        path = root / "docs.jsonl.gz"
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps({"meta": {"context": p}}) + "\n" for p in passages)
        return DataConfig(path=str(path), text_field="meta.context")
    if fmt == "parquet_glob":
        folder = root / "parquet"
        folder.mkdir()
        pq.write_table(pa.table({"text": passages[:5]}), folder / "part-0.parquet", row_group_size=2)
        pq.write_table(pa.table({"text": passages[5:]}), folder / "part-1.parquet", row_group_size=2)
        return DataConfig(path=str(folder / "*.parquet"))
    if fmt == "parquet_nested":
        path = root / "nested.parquet"
        pq.write_table(pa.table({"meta": [{"context": p, "id": i} for i, p in enumerate(passages)]}), path)
        return DataConfig(path=str(path), text_field="meta.context")
    if fmt == "text":
        folder = root / "texts"
        folder.mkdir()
        for i, p in enumerate(passages):
            (folder / f"doc{i:02d}.txt").write_text(p)
        return DataConfig(path=str(folder))
    if fmt == "text_lines":
        path = root / "lines.txt"
        path.write_text("\n".join(passages) + "\n")
        return DataConfig(path=str(path))
    if fmt == "hf_disk":
        import datasets

        datasets.Dataset.from_dict({"context": passages}).save_to_disk(str(root / "saved"))
        return DataConfig(path=str(root / "saved"), text_field="context")
    raise AssertionError(fmt)


FORMAT_PASSAGES = 10


@pytest.fixture(scope="module")
def jsonl_reference_rows(ray_session, tmp_path_factory):
    """Rows of the first passages read from plain JSONL, without the origin columns (which differ by format)."""
    root = tmp_path_factory.mktemp("reference")
    passages = [p.replace("\n", " ") for p in _passages()[:FORMAT_PASSAGES]]
    cfg = DataConfig(path=str(_write_jsonl(root / "ref.jsonl", [{"text": p} for p in passages])), output_dir=str(root / "out"))
    return passages, sorted((r[0], r[1], r[4], r[5], r[6]) for r in _rows(build_training_dataset(cfg, SplitConfig(seed=5))[0]))


@pytest.mark.parametrize("fmt, detected", [("jsonl.gz", "jsonl"), ("parquet_glob", "parquet"), ("parquet_nested", "parquet"),
                                           ("text", "text"), ("text_lines", "text_lines"), ("hf_disk", "hf_disk")])
@pytest.mark.ray
def test_every_format_gives_the_same_rows(ray_session, tmp_path, jsonl_reference_rows, fmt, detected):
    passages, reference = jsonl_reference_rows
    cfg = _write_format(fmt, tmp_path, passages)
    cfg = DataConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "out"), "dedupe": False})
    dataset, report = build_training_dataset(cfg, SplitConfig(seed=5))
    assert report.corpus_format == detected and report.records_read == report.documents_kept == FORMAT_PASSAGES
    rows = _rows(dataset)
    assert sorted((r[0], r[1], r[4], r[5], r[6]) for r in rows) == reference
    origins = {(Path(r[2]).name, r[3]) for r in rows}
    if fmt == "text":
        assert origins == {(f"doc{i:02d}.txt", 0) for i in range(FORMAT_PASSAGES)}
    elif fmt == "parquet_glob":  # rows count from 0 in each file, across row groups of 2
        assert origins == {(f"part-{i // 5}.parquet", i % 5) for i in range(FORMAT_PASSAGES)}
    else:
        assert {row for _, row in origins} == set(range(FORMAT_PASSAGES))


# --------------------------------------------------------------------------- scale


@pytest.fixture(scope="module")
def punctuation_tokenizer(tmp_path_factory) -> str:
    """A tiny local tokenizer (split at punctuation, one id): fast enough to push ~200 MB through in a test.

    What this test checks is memory, not tokenization; the other tests use the real tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("punctuation_tokenizer")
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "<|endoftext|>": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Punctuation()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]",
                                                              "eos_token": "<|endoftext|>"}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(folder)


@pytest.mark.ray
def test_a_corpus_larger_than_the_object_store_streams_through(ray_session, tmp_path, punctuation_tokenizer):
    from ray._private.internal_api import memory_summary

    rng = random.Random(0)
    words = "alpha beta gamma delta protein cell gene binds the of and receptor in human kinase".split()
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 15))).capitalize() + "." for _ in range(2000)]
    corpus, documents, size = tmp_path / "corpus", 0, 0
    corpus.mkdir()
    for part in range(6):
        lines = []
        while size < (part + 1) * 2.5 * OBJECT_STORE_BYTES / 6:
            line = json.dumps({"text": f"Document {documents}. " + " ".join(rng.choices(sentences, k=60))}) + "\n"
            lines.append(line)
            size, documents = size + len(line), documents + 1
        (corpus / f"part-{part}.jsonl").write_text("".join(lines))
    assert size > 2.5 * OBJECT_STORE_BYTES

    cfg = DataConfig(path=str(corpus), tokenizer=punctuation_tokenizer, max_length=4096, output_dir=str(tmp_path / "out"))
    dataset, report = build_training_dataset(cfg, SplitConfig())
    assert report.records_read == report.documents_kept == report.examples == documents
    assert report.dropped == {}
    assert dataset.count() == documents
    summary = memory_summary(address=ray_session.get_runtime_context().gcs_address, stats_only=True)
    spilled = re.search(r"Spilled (\d+) MiB", summary)
    assert spilled is None or int(spilled.group(1)) < 0.5 * OBJECT_STORE_BYTES / 2**20, summary


@pytest.mark.ray
def test_shards_are_equal(ray_session):
    import ray.data

    dataset = ray.data.range(101, override_num_blocks=7)
    shards = split_equal_shards(dataset, 2)
    counts = [0, 0]

    def consume(rank):
        for batch in shards[rank].iter_batches(batch_size=8):
            counts[rank] += len(batch["id"])

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [50, 50]
    from disc_ray.data import DataReport

    assert DataReport(examples=101).shard_sizes(2) == (50, 1)


# --------------------------------------------------------------------------- CLI


@pytest.mark.ray
def test_cli_inspect_prints_counts_and_samples_and_writes_reusable_rows(ray_session, tmp_path, capsys):
    from disc_ray.cli import main

    out = tmp_path / "processed"
    assert main(["data", "inspect", str(BIOASQ), "--data.text_field", "meta.context", "--data.output_dir", str(out), "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "read 208 records" in printed and "tokens per example" in printed
    assert printed.count("student reads") >= 2 and "sample 2:" in printed
    assert (out / "data_report.json").is_file() and list((out / "status=kept").glob("*.parquet"))
    stored = json.loads((out / "data_report.json").read_text())["report"]

    dataset, report = build_training_dataset(DataConfig(path=str(out)), SplitConfig())  # reused, not processed again
    assert report.examples == stored["examples"] == dataset.count()
    with pytest.raises(DataError, match="different max_length"):
        build_training_dataset(DataConfig(path=str(out), max_length=512), SplitConfig())


@pytest.mark.ray
def test_cli_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "disc_ray.cli", "data", "inspect", str(tmp_path / "nope.jsonl")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"disc-ray data inspect: error: data.path: {tmp_path / 'nope.jsonl'} does not exist"
