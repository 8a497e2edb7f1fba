import random

import pytest

from disc_ray.splits import (
    STRATEGIES,
    DocumentExample,
    choose_split_spans,
    DocumentSkipped,
    SplitConfig,
    prepare_document,
    segment_sentences,
    tokenize_document,
)

DOC = ("Zorvath Labs was founded in Quellmoor in 2031. It makes cobalt-free batteries. "
       "The company employs 412 people. Its founder, Ilsa Brenn, studied in Varnholt. "
       "Zorvath Labs plans to double production in Quellmoor next year. Ok.")


def test_sentence_token_spans_cover_the_single_tokenization(tokenizer):
    (example,) = tokenize_document(DOC, tokenizer)
    assert example.input_ids == tokenizer(DOC)["input_ids"]  # tokenized once, as a whole
    spans = example.sentence_spans
    assert spans[0][0] == example.num_special_prefix and spans[-1][1] == len(example.input_ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "spans must be contiguous"
    assert len(spans) == len(segment_sentences(DOC)) == 6
    # the space between sentences stays with the next sentence's first token, nothing is dropped
    decoded = [tokenizer.decode(example.input_ids[s:e]) for s, e in spans]
    assert "".join(decoded) == DOC
    assert decoded[1] == " It makes cobalt-free batteries."


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategies_are_deterministic_under_a_seed(tokenizer, bioasq_passages, strategy):
    cfg = SplitConfig(strategy=strategy, seed=3, suffix_tokens=8)
    for text in bioasq_passages[:5]:
        first = prepare_document(text, tokenizer, cfg)
        again = prepare_document(text, tokenizer, cfg)
        assert [e.split_spans for e in first] == [e.split_spans for e in again]
        for example in first:
            for start, end in example.split_spans:
                assert end - start >= 2
                assert example.num_special_prefix < start and end <= len(example.input_ids), "splits stay inside the document, never at its start"


def test_seed_changes_random_split_points(tokenizer, bioasq_passages):
    spans = {seed: [prepare_document(t, tokenizer, SplitConfig(seed=seed))[0].split_spans for t in bioasq_passages[:10]] for seed in (0, 1)}
    assert spans[0] != spans[1]


def test_sentence_boundary_picks_k_sentences_including_the_last(tokenizer, bioasq_passages):
    cfg = SplitConfig(strategy="sentence_boundary", num_splits=5)
    checked = 0
    for text in bioasq_passages[:20]:
        for example in prepare_document(text, tokenizer, cfg):
            long_sentences = [s for s in example.sentence_spans[1:] if s[1] - s[0] >= 2]
            assert example.split_spans[-1] == example.sentence_spans[-1]
            assert set(example.split_spans) <= set(example.sentence_spans[1:])
            if len(long_sentences) >= 5:
                assert len(example.split_spans) == 5
                checked += 1
    assert checked >= 5


def test_short_sentences_are_never_chosen():
    # real text rarely has one-token sentences, so build the example by hand: sentences of 1 token at 4 and 9
    sentences = [(0, 4), (4, 5), (5, 9), (9, 10), (10, 14), (14, 15)]
    example = DocumentExample(input_ids=list(range(15)), sentence_spans=sentences)
    for strategy in ("sentence_boundary", "fixed_uniform_sentence", "middle_only"):
        for seed in range(5):
            spans = choose_split_spans(example, SplitConfig(strategy=strategy, num_splits=10), random.Random(seed))
            assert all(e - s >= 2 for s, e in spans)
            assert set(spans) <= {(5, 9), (10, 14)}
    spans = choose_split_spans(example, SplitConfig(num_splits=10), random.Random(0))
    assert spans == [(5, 9), (10, 14)]


def test_token_strategies(tokenizer, bioasq_passages):
    (example,) = prepare_document(bioasq_passages[0], tokenizer, SplitConfig(strategy="token_random", num_splits=5))
    spans = example.split_spans
    assert len(spans) == 5 and spans[-1][1] == len(example.input_ids)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "token_random suffixes run to the next split point"
    (example,) = prepare_document(bioasq_passages[0], tokenizer, SplitConfig(strategy="token_random_variable_suffix", suffix_tokens=7))
    assert all(e - s == 7 or e == len(example.input_ids) for s, e in example.split_spans)
    (example,) = prepare_document(bioasq_passages[0], tokenizer, SplitConfig(strategy="token_uniform", num_splits=4))
    starts = [s for s, _ in example.split_spans]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 4 and max(gaps) - min(gaps) <= 1


def test_long_documents_are_windowed_not_crashed(tokenizer, bioasq_passages):
    text = " ".join(bioasq_passages[:12])
    total = len(tokenizer(text)["input_ids"])
    examples = prepare_document(text, tokenizer, SplitConfig(), max_length=256)
    assert total > 256 * 4 and len(examples) >= total // 256
    assert all(len(e.input_ids) <= 256 for e in examples)
    assert sum(len(e.input_ids) for e in examples) == total  # windows partition the document
    # a single sentence longer than a window is cut into pieces
    giant = "word " * 3000 + "end."
    pieces = tokenize_document(giant, tokenizer, max_length=512)
    assert len(pieces) >= 6 and all(len(p.input_ids) <= 512 for p in pieces)


@pytest.mark.parametrize("text,reason", [("", "empty"), ("   \n\t ", "empty"), (None, "not_text"), (42, "not_text"),
                                         ("Only one sentence here about nothing at all.", "single_sentence")])
def test_unusable_documents_are_skipped_with_a_reason(tokenizer, text, reason):
    with pytest.raises(DocumentSkipped) as err:
        prepare_document(text, tokenizer, SplitConfig())
    assert err.value.reason == reason


def test_single_sentence_document_still_trains_ft(tokenizer):
    examples = prepare_document("Only one sentence here about nothing at all.", tokenizer, SplitConfig(), with_splits=False)
    assert len(examples) == 1 and len(examples[0].input_ids) > 5


@pytest.mark.parametrize("kwargs", [{"strategy": "nope"}, {"num_splits": 0}, {"suffix_tokens": -1}])
def test_invalid_split_config(kwargs):
    with pytest.raises(ValueError, match="split"):
        SplitConfig(**kwargs)
