"""The built-in synthetic corpus: determinism, probe validity, and the restated/single contract."""

import collections
import hashlib
import json
from pathlib import Path

import blingfire
import pytest

from disc_ray.synthetic import generate_corpus, probe_rows, write_corpus

BIOASQ = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bioasq_mcq" / \
    "bioasq_mcq_hardest_full.jsonl"
ROW_KEYS = {"question", "options", "correct_index", "meta"}
META_KEYS = {"answer", "context", "id", "kind", "doc_id", "genre"}


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(64, seed=0)


def sentences_of(text: str) -> list[str]:
    """The sentences blingfire finds (what the DiSC splitter sees)."""
    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    return [text[start:end] for start, end in offsets]


def sentences_containing(answer: str, text: str) -> int:
    return sum(answer in sentence for sentence in sentences_of(text))


def all_probes(corpus):
    return [(doc, probe) for doc in corpus for probe in doc.probes]


def test_same_seed_gives_identical_rows_and_bytes(tmp_path):
    assert probe_rows(generate_corpus(20, seed=5)) == probe_rows(generate_corpus(20, seed=5))
    first = write_corpus(tmp_path / "a", num_documents=20, seed=5)
    again = write_corpus(tmp_path / "b", num_documents=20, seed=5)
    for key in ("documents", "probes"):
        assert first[key].read_bytes() == again[key].read_bytes()


# sha256 of documents.jsonl + probes.jsonl written by write_corpus, recorded before the templates moved from
# synthetic.py to synthetic_templates.json (issue 18): the move changed no byte. A deliberate change to a
# template changes these; update them in the same commit and say why.
CORPUS_SHA256 = {(64, 0): "91d01b07fcc982a829d9a44b43ec4777108be303dc0a70a4df278a971100cfbf",
                 (200, 7): "25f63d9c4e9bf91064eb747ed150792ef5f8371cb1893fb0a33dcc8bb073a98c"}


@pytest.mark.core
@pytest.mark.parametrize("num_documents,seed", sorted(CORPUS_SHA256))
def test_generated_corpus_for_a_fixed_seed_is_unchanged(tmp_path, num_documents, seed):
    paths = write_corpus(tmp_path, num_documents=num_documents, seed=seed)
    digest = hashlib.sha256(paths["documents"].read_bytes() + paths["probes"].read_bytes()).hexdigest()
    assert digest == CORPUS_SHA256[(num_documents, seed)]


@pytest.mark.core
def test_templates_come_from_the_package_data_file():
    from importlib import resources

    from disc_ray.synthetic import TEMPLATES

    data = json.loads(resources.files("disc_ray").joinpath("synthetic_templates.json").read_text(encoding="utf-8"))
    assert [t["name"] for t in data["templates"]] == [t.name for t in TEMPLATES] and len(TEMPLATES) == 9
    first_round = generate_corpus(len(TEMPLATES), seed=0)  # one shuffled round: every template once
    assert sorted(doc.entity_type for doc in first_round) == sorted(t["entity_type"] for t in data["templates"])


def test_different_seeds_give_different_documents():
    texts_0 = {doc.text for doc in generate_corpus(20, seed=0)}
    texts_1 = {doc.text for doc in generate_corpus(20, seed=1)}
    assert texts_0.isdisjoint(texts_1)


def test_entities_doc_ids_and_texts_are_unique(corpus):
    assert len({doc.entity_name for doc in corpus}) == len(corpus)
    assert len({doc.doc_id for doc in corpus}) == len(corpus)
    assert len({doc.text for doc in corpus}) == len(corpus)
    assert [doc.doc_id for doc in corpus[:2]] == ["synth-000000", "synth-000001"]
    assert all(doc.entity_name in doc.text for doc in corpus)


def test_options_are_four_distinct_and_the_answer_is_in_the_document(corpus):
    for doc, probe in all_probes(corpus):
        assert len(probe.options) == 4 and len(set(probe.options)) == 4
        assert 0 <= probe.correct_index < 4
        assert probe.options[probe.correct_index] == probe.answer
        assert probe.answer in doc.text
        distractors = [o for i, o in enumerate(probe.options) if i != probe.correct_index]
        assert not any(d in doc.text for d in distractors), (probe, doc.text)
        assert probe.question.endswith("?") and doc.entity_name in probe.question


def test_restated_answers_occur_in_two_sentences_single_answers_in_one(corpus):
    for doc, probe in all_probes(corpus):
        count = sentences_containing(probe.answer, doc.text)
        if probe.kind == "restated":
            assert count >= 2, (probe, doc.text)
        else:
            assert probe.kind == "single"
            assert count == 1, (probe, doc.text)


def test_every_document_has_both_kinds(corpus):
    for doc in corpus:
        kinds = collections.Counter(probe.kind for probe in doc.probes)
        assert 2 <= kinds["restated"] <= 3 and 2 <= kinds["single"] <= 3, doc.doc_id
        assert len({probe.answer for probe in doc.probes}) == len(doc.probes)


def test_documents_split_into_normal_sentences_of_the_right_size(corpus):
    for doc in corpus:
        sentences = sentences_of(doc.text)
        assert 6 <= len(sentences) <= 12, doc.text
        assert 120 <= len(doc.text.split()) <= 350, doc.text
        assert all(s.endswith(".") and s[0].isupper() for s in sentences), sentences
        assert " ".join(sentences) == doc.text  # the splitter cut only between sentences


def test_genres_and_templates_vary(corpus):
    genres = collections.Counter(doc.genre for doc in corpus)
    assert set(genres) == {"news", "encyclopedia", "abstract"}
    for genre in genres:
        entity_types = {doc.entity_type for doc in corpus if doc.genre == genre}
        assert len(entity_types) >= 3, (genre, entity_types)
    assert len({(doc.genre, doc.entity_type) for doc in corpus}) >= 9
    # phrasing and length vary within a template: some closings summarise, others do not
    summaries = sum(sentences_of(doc.text)[-1].startswith("In summary") for doc in corpus)
    assert 0.1 * len(corpus) < summaries < 0.9 * len(corpus)
    assert len({len(sentences_of(doc.text)) for doc in corpus}) >= 3


def test_correct_index_is_spread_over_positions(corpus):
    counts = collections.Counter(probe.correct_index for _, probe in all_probes(corpus))
    assert len(counts) >= 3
    assert max(counts.values()) < 0.4 * sum(counts.values()), counts


def test_probe_rows_match_the_bioasq_format(corpus):
    rows = probe_rows(corpus)
    assert len(rows) == sum(len(doc.probes) for doc in corpus)
    assert [row["meta"]["id"] for row in rows] == list(range(len(rows)))
    for row in rows:
        assert set(row) == ROW_KEYS and set(row["meta"]) == META_KEYS
        assert row["options"][row["correct_index"]] == row["meta"]["answer"]
    if BIOASQ.exists():
        bioasq_row = json.loads(BIOASQ.read_text().splitlines()[0])
        assert set(bioasq_row) == ROW_KEYS
        assert set(bioasq_row["meta"]) <= META_KEYS
        assert type(bioasq_row["meta"]["id"]) is type(rows[0]["meta"]["id"])


def test_write_corpus_round_trips(tmp_path):
    paths = write_corpus(tmp_path / "out", num_documents=12, seed=3)
    documents = generate_corpus(12, seed=3)
    written_docs = [json.loads(line) for line in paths["documents"].read_text().splitlines()]
    assert written_docs == [{"id": d.doc_id, "text": d.text, "genre": d.genre,
                             "entity_type": d.entity_type} for d in documents]
    written_probes = [json.loads(line) for line in paths["probes"].read_text().splitlines()]
    assert written_probes == probe_rows(documents)
    doc_texts = {d["id"]: d["text"] for d in written_docs}
    assert all(row["meta"]["context"] == doc_texts[row["meta"]["doc_id"]]
               for row in written_probes)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", None, True])
def test_invalid_num_documents_raises(bad, tmp_path):
    with pytest.raises(ValueError, match="num_documents"):
        generate_corpus(bad)
    with pytest.raises(ValueError, match="num_documents"):
        write_corpus(tmp_path, num_documents=bad)
