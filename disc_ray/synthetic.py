"""A seeded, built-in knowledge-update corpus about fictional entities (standard library only).

Each document is about an invented entity (a company, person, town, species, compound or device)
written as a news report, an encyclopedia entry or a scientific abstract, with multiple-choice
probes whose answers only the document gives: invented names, numbers and places that no
pretrained model can know.

Documents read like real ones: key facts are stated early (headline, lead, first sentence) and
restated later (body, closing summary), while other details are stated exactly once. The
difference matters for DiSC: a fact transfers when a teacher that already read it earlier in the
document predicts it again in a later sentence; a fact stated once gives the teacher no advantage.
Each probe therefore carries ``kind``: ``"restated"`` (the answer string appears in at least two
sentences) or ``"single"`` (in exactly one sentence). The generator checks both properties, and
the document's length, on every document it emits and redraws the document if one fails.

Sentences are plain English ending with a period and contain no abbreviations with periods, so a
sentence splitter (blingfire) cuts exactly where the templates do. The sentence templates, fillers,
questions and word lists live in ``synthetic_templates.json`` next to this module (package data);
this module invents the values and assembles the documents.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["Probe", "SyntheticDocument", "generate_corpus", "probe_rows", "write_corpus"]

GENRES = ("news", "encyclopedia", "abstract")
NUM_OPTIONS = 4
MIN_WORDS, MAX_WORDS = 120, 350
MIN_SENTENCES, MAX_SENTENCES = 6, 12
FILLER_TARGET_WORDS = 128  # fillers are added until a document reaches this many words
MAX_ATTEMPTS = 100  # redraws of one document (or one option list) before giving up


@dataclass(frozen=True)
class Probe:
    """A multiple-choice question about one fact of a document."""

    question: str
    options: list[str]  # NUM_OPTIONS distinct options of the same type
    correct_index: int
    kind: str  # "restated": answer in >= 2 sentences; "single": answer in exactly 1 sentence
    answer: str


@dataclass(frozen=True)
class SyntheticDocument:
    """A document about one invented entity, with the probes that test what it teaches."""

    doc_id: str  # e.g. "synth-000042"
    genre: str  # "news" | "encyclopedia" | "abstract"
    entity_type: str
    text: str
    probes: list[Probe]
    entity_name: str  # unique across a corpus: no two documents share an entity


# ---------------------------------------------------------------------------------------------
# Invented names and numbers
# ---------------------------------------------------------------------------------------------

# The sentence templates and word lists are data: disc_ray/synthetic_templates.json (package data).
_TEMPLATE_DATA = json.loads(resources.files("disc_ray").joinpath("synthetic_templates.json").read_text(encoding="utf-8"))
_NAMES = {key: tuple(values) for key, values in _TEMPLATE_DATA["names"].items()}
_ONSETS, _VOWELS = _NAMES["onsets"], _NAMES["vowels"]
_INNER_CODAS, _FINAL_CODAS = _NAMES["inner_codas"], _NAMES["final_codas"]  # inner codas keep consonant clusters short
_FIRST_NAMES, _SURNAME_ENDINGS, _PLACE_ENDINGS = _NAMES["first_names"], _NAMES["surname_endings"], _NAMES["place_endings"]

def _attach(root: str, ending: str) -> str:
    """Joins a root and an ending without a run of vowels ("Tera" + "ia" -> "Teria")."""
    if ending and ending[0] in "aeiou":
        root = root.rstrip("aeiou")
    return root + ending


@dataclass(frozen=True)
class _Value:
    """A fact's text, and how to invent another value of the same type (for distractors)."""

    text: str
    remake: Callable[[], str] | None = None  # None: scenery, never asked about


class _Maker:
    """Invents names and numbers from one seeded RNG.

    Every invented word and name is remembered, so no two documents share an entity and no root
    word is reused (which keeps the answers of one document from being substrings of each other).
    """

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._used: set[str] = set()

    # -- value constructors -------------------------------------------------------------------
    def fixed(self, text: str) -> _Value:
        return _Value(text)

    def choice(self, items: Iterable[str]) -> _Value:
        return _Value(self.rng.choice(tuple(items)))

    def unique(self, build: Callable[[], str]) -> _Value:
        """An invented name; distractors are further names from the same builder.

        ``build`` must include one ``word()``: that root is never reused, so the name is new.
        """
        return _Value(build(), build)

    def number(self, low: int, high: int, fmt: str = "{:,}", step: int = 1) -> _Value:
        """A number drawn from a plausible range; distractors come from the same range."""
        make = lambda: fmt.format(self.rng.randrange(low, high + 1, step))  # noqa: E731
        return _Value(make(), make)

    def year(self, low: int, high: int) -> _Value:
        return self.number(low, high, fmt="{}")

    # -- name builders (each call returns a new name built on a never used root word) ---------
    def word(self) -> str:
        """A new invented word: never returned before by this maker."""
        for _ in range(MAX_ATTEMPTS):
            word = self._syllables()
            if word not in self._used:
                self._used.add(word)
                return word
        raise RuntimeError("could not invent a new word; the name space is exhausted")

    def person(self) -> str:
        return f"{self.rng.choice(_FIRST_NAMES)} {self.word()}{self.rng.choice(_SURNAME_ENDINGS)}"

    def place(self) -> str:
        return _attach(self.word(), self.rng.choice(_PLACE_ENDINGS))

    def organisation(self) -> str:
        kinds = ("Industries", "Dynamics", "Systems", "Technologies", "Holdings")
        return f"{self.word()} {self.rng.choice(kinds)}"

    def species(self) -> str:
        genus = _attach(self.word(), self.rng.choice(("a", "ia", "us", "ella", "opsis")))
        epithet = _attach(self.word().lower(), self.rng.choice(("ensis", "i", "ata", "ica")))
        return f"{genus} {epithet}"

    def compound(self) -> str:
        endings = ("azole", "amide", "idine", "oxin", "anol")
        return _attach(self.word().lower(), self.rng.choice(endings))

    def enzyme(self) -> str:
        return f"{self.word()} {self.rng.choice(('kinase', 'protease', 'synthase', 'reductase'))}"

    def device(self) -> str:
        return _attach(self.word(), self.rng.choice(("trax", "scope", "sense", "link", "tron")))

    def _syllables(self) -> str:
        count = self.rng.choice((2, 2, 2, 3))
        codas = [_INNER_CODAS] * (count - 1) + [_FINAL_CODAS]
        parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(coda)
                 for coda in codas]
        return "".join(parts).capitalize()


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

Variants = tuple[str, ...]  # alternative phrasings of one sentence (str.format over value texts)


@dataclass(frozen=True)
class _Template:
    """One kind of document: its sentences in order and the facts it can be probed on.

    ``sentences[0]`` is the lead and ``sentences[-1]`` the closing; fillers (sentences without
    probed facts) go between them. ``restated`` and ``single`` map a value key to its question.
    """

    name: str
    genre: str
    entity_type: str
    make_values: Callable[[_Maker], dict[str, _Value]]
    sentences: tuple[Variants, ...]
    fillers: tuple[str, ...]
    restated: dict[str, str]
    single: dict[str, str]


def _surname(full_name: str) -> _Value:
    return _Value(full_name.split()[-1])


def _news_acquisition_values(m: _Maker) -> dict[str, _Value]:
    return {
        "name": m.unique(m.organisation), "target": m.unique(m.organisation),
        "city": m.unique(m.place), "price": m.number(40, 900, "{} million euros"),
        "ceo": m.unique(m.person), "staff": m.number(300, 9000, "{:,} people", step=10),
        "founded": m.year(1950, 2010), "plants": m.number(3, 19, "{} factories"),
        "product": m.choice(("industrial pumps", "farm drones", "ceramic filters",
                             "medical imaging software", "electric ferry engines")),
    }


def _news_appointment_values(m: _Maker) -> dict[str, _Value]:
    name = m.unique(m.person)
    return {
        "name": name, "surname": _surname(name.text),
        "institute": m.unique(lambda: f"{m.word()} Institute"), "city": m.unique(m.place),
        "project": m.unique(lambda: f"{m.word()} Project"), "predecessor": m.unique(m.person),
        "university": m.unique(lambda: f"University of {m.place()}"),
        "budget": m.number(12, 240, "{} million euros"),
        "staff": m.number(40, 900, "{} researchers"),
    }


def _news_bridge_values(m: _Maker) -> dict[str, _Value]:
    return {
        "name": m.unique(m.place), "river": m.unique(lambda: f"{m.word()} River"),
        "firm": m.unique(lambda: f"{m.word()} Construction"),
        "cost": m.number(30, 400, "{} million euros"),
        "length": m.number(180, 1400, "{:,} metres", step=10), "engineer": m.unique(m.person),
        "ferry_year": m.year(1890, 1975),
        "vehicles": m.number(4000, 40000, "{:,} vehicles", step=100),
    }


def _encyclopedia_town_values(m: _Maker) -> dict[str, _Value]:
    landmark_kinds = ("Tower", "Abbey", "Gate", "Hall")
    return {
        "name": m.unique(m.place), "region": m.unique(m.word),
        "population": m.number(2000, 90000, "{:,}", step=10), "founded": m.year(1100, 1850),
        "river": m.unique(lambda: f"{m.word()} River"),
        "landmark": m.unique(lambda: f"{m.word()} {m.rng.choice(landmark_kinds)}"),
        "twin": m.unique(m.place),
        "industry": m.choice(("timber, dairy farming and tourism", "glassmaking and fishing",
                              "wine growing and light engineering", "textiles and trade")),
    }


_ARTIST_PROFILES = (  # (profession with its article, kind of work, endings of work titles)
    ("a composer", "orchestral cycle", ("Variations", "Suite", "Symphony")),
    ("a painter", "series of paintings", ("Studies", "Interiors", "Nocturnes")),
    ("an architect", "concert hall", ("Hall", "Auditorium", "Pavilion")),
)


def _encyclopedia_person_values(m: _Maker) -> dict[str, _Value]:
    profession, kind, endings = m.rng.choice(_ARTIST_PROFILES)
    name = m.unique(m.person)
    return {
        "name": name, "surname": _surname(name.text), "profession": m.fixed(profession),
        "kind": m.fixed(kind), "birthplace": m.unique(m.place), "born": m.year(1890, 1975),
        "work": m.unique(lambda: f"{m.word()} {m.rng.choice(endings)}"),
        "university": m.unique(lambda: f"University of {m.place()}"),
        "mentor": m.unique(m.person),
        "award": m.unique(lambda: f"{m.word()} {m.rng.choice(('Medal', 'Prize'))}"),
        "works": m.number(30, 240, "{} works"),
    }


def _encyclopedia_species_values(m: _Maker) -> dict[str, _Value]:
    plant = m.rng.choice(("sedge", "willow", "heather", "rush"))
    return {
        "name": m.unique(m.species), "group": m.choice(("moth", "beetle", "butterfly")),
        "range": m.unique(lambda: f"{m.word()} Highlands"),
        "length": m.number(8, 95, "{} millimetres"), "discoverer": m.unique(m.person),
        "described": m.year(1820, 1990), "host": m.unique(lambda: f"{m.word()} {plant}"),
        "altitude": m.number(600, 3200, "{:,} metres", step=10),
        "clutch": m.number(12, 180, "{} eggs"),
    }


def _abstract_compound_values(m: _Maker) -> dict[str, _Value]:
    return {
        "name": m.unique(m.compound), "enzyme": m.unique(m.enzyme),
        "precursor": m.unique(m.compound), "steps": m.number(3, 11, "{} steps"),
        "overall_yield": m.number(12, 68, "{} percent"),
        "ic50": m.number(4, 950, "{} nanomolar"),
        "melting": m.number(90, 290, "{} degrees Celsius"),
        "half_life": m.number(2, 36, "{} hours"),
    }


def _abstract_field_study_values(m: _Maker) -> dict[str, _Value]:
    start = m.year(1994, 2010)
    predator_kind = m.rng.choice(("marten", "stoat", "weasel"))
    return {
        "name": m.unique(m.species), "island": m.unique(m.place), "start": start,
        "end": m.fixed(str(int(start.text) + m.rng.randint(5, 12))),
        "sites": m.number(12, 140, "{} sites"), "decline": m.number(18, 74, "{} percent"),
        "nests": m.number(40, 900, "{} nests"),
        "predator": m.unique(lambda: f"{m.word()} {predator_kind}"),
        "team": m.unique(lambda: f"{m.word()} Conservation Trust"),
    }


_DEVICE_USES = (  # (how it is worn, what it detects)
    ("wrist-worn", "irregular heart rhythms"),
    ("finger-worn", "early signs of sleep apnoea"),
    ("chest-worn", "episodes of rapid breathing"),
)


def _abstract_device_values(m: _Maker) -> dict[str, _Value]:
    wear, condition = m.rng.choice(_DEVICE_USES)
    return {
        "name": m.unique(m.device), "wear": m.fixed(wear), "condition": m.fixed(condition),
        "power": m.number(2, 40, "{} milliwatts"), "accuracy": m.number(81, 99, "{} percent"),
        "hospital": m.unique(lambda: f"{m.place()} General Hospital"),
        "participants": m.number(40, 600, "{} participants"),
        "weight": m.number(9, 60, "{} grams"), "battery": m.number(18, 240, "{} hours"),
        "rate": m.number(50, 1000, "{} hertz", step=10),
    }


_VALUE_MAKERS: dict[str, Callable[[_Maker], dict[str, _Value]]] = {
    "news_acquisition": _news_acquisition_values, "news_appointment": _news_appointment_values,
    "news_bridge": _news_bridge_values, "encyclopedia_town": _encyclopedia_town_values,
    "encyclopedia_person": _encyclopedia_person_values, "encyclopedia_species": _encyclopedia_species_values,
    "abstract_compound": _abstract_compound_values, "abstract_field_study": _abstract_field_study_values,
    "abstract_device": _abstract_device_values,
}


def _build_templates(data: dict) -> tuple[_Template, ...]:
    """The templates of ``synthetic_templates.json`` in file order (the order is part of the seeded schedule),
    each joined with the function that invents its values. Raises KeyError for a template without one."""
    return tuple(
        _Template(name=t["name"], genre=t["genre"], entity_type=t["entity_type"], make_values=_VALUE_MAKERS[t["name"]],
                  sentences=tuple(tuple(variants) for variants in t["sentences"]), fillers=tuple(t["fillers"]),
                  restated=dict(t["restated"]), single=dict(t["single"]))
        for t in data["templates"]
    )


TEMPLATES: tuple[_Template, ...] = _build_templates(_TEMPLATE_DATA)


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def _sentences_containing(answer: str, sentences: list[str]) -> int:
    return sum(answer in sentence for sentence in sentences)


def _write_sentences(template: _Template, texts: dict[str, str], rng: random.Random) -> list[str]:
    """Picks one phrasing per sentence, then inserts fillers between lead and closing."""
    sentences = [rng.choice(variants).format(**texts) for variants in template.sentences]
    fillers = [f.format(**texts) for f in rng.sample(template.fillers, len(template.fillers))]
    wanted = rng.randint(0, 2)
    while fillers and len(sentences) < MAX_SENTENCES and (
            wanted > 0 or len(" ".join(sentences).split()) < FILLER_TARGET_WORDS):
        sentences.insert(rng.randint(1, len(sentences) - 1), fillers.pop())
        wanted -= 1
    return sentences


def _is_well_formed(template: _Template, texts: dict[str, str], sentences: list[str]) -> bool:
    """True when the probe kinds hold (restated >= 2 sentences, single == 1) and sizes fit."""
    words = len(" ".join(sentences).split())
    if not (MIN_SENTENCES <= len(sentences) <= MAX_SENTENCES and MIN_WORDS <= words <= MAX_WORDS):
        return False
    restated_ok = all(_sentences_containing(texts[k], sentences) >= 2 for k in template.restated)
    single_ok = all(_sentences_containing(texts[k], sentences) == 1 for k in template.single)
    return restated_ok and single_ok


def _options(value: _Value, text: str, rng: random.Random) -> tuple[list[str], int]:
    """The answer among three distractors of its type that the document never mentions."""
    distractors: list[str] = []
    for _ in range(MAX_ATTEMPTS):
        candidate = value.remake()
        if candidate != value.text and candidate not in distractors and candidate not in text:
            distractors.append(candidate)
        if len(distractors) == NUM_OPTIONS - 1:
            correct_index = rng.randrange(NUM_OPTIONS)  # seeded and uniform over positions
            distractors.insert(correct_index, value.text)
            return distractors, correct_index
    raise RuntimeError(f"could not find distractors for {value.text!r}")


def _probe(key: str, question: str, kind: str, values: dict[str, _Value], text: str,
           rng: random.Random) -> Probe:
    texts = {k: v.text for k, v in values.items()}
    options, correct_index = _options(values[key], text, rng)
    return Probe(question=question.format(**texts), options=options,
                 correct_index=correct_index, kind=kind, answer=values[key].text)


def _choose_probes(template: _Template, values: dict[str, _Value], text: str,
                   rng: random.Random) -> list[Probe]:
    """Two or three probes of each kind, so every document tests both kinds of fact."""
    probes = []
    for kind, questions in (("restated", template.restated), ("single", template.single)):
        keys = rng.sample(list(questions), rng.randint(2, min(3, len(questions))))
        probes += [_probe(k, questions[k], kind, values, text, rng) for k in keys]
    rng.shuffle(probes)
    return probes


def _make_document(index: int, template: _Template, maker: _Maker,
                   taken_entities: set[str]) -> SyntheticDocument:
    """Draws documents from ``template`` until one is well formed and about a new entity."""
    rng = maker.rng
    for _ in range(MAX_ATTEMPTS):
        values = template.make_values(maker)
        texts = {k: v.text for k, v in values.items()}
        sentences = _write_sentences(template, texts, rng)
        if texts["name"] not in taken_entities and _is_well_formed(template, texts, sentences):
            taken_entities.add(texts["name"])
            text = " ".join(sentences)
            return SyntheticDocument(
                doc_id=f"synth-{index:06d}", genre=template.genre,
                entity_type=template.entity_type, text=text,
                probes=_choose_probes(template, values, text, rng), entity_name=texts["name"])
    raise RuntimeError(f"template {template.name} produced no well-formed document")


def _template_schedule(num_documents: int, rng: random.Random) -> list[_Template]:
    """Templates in shuffled rounds, so every genre and template appears evenly."""
    schedule: list[_Template] = []
    while len(schedule) < num_documents:
        schedule += rng.sample(TEMPLATES, len(TEMPLATES))
    return schedule[:num_documents]


def _check_arguments(num_documents: object, seed: object) -> None:
    if isinstance(num_documents, bool) or not isinstance(num_documents, int) or num_documents < 1:
        raise ValueError(f"num_documents must be a positive integer, got {num_documents!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def generate_corpus(num_documents: int = 64, seed: int = 0) -> list[SyntheticDocument]:
    """Generates the corpus; the same seed always gives the same documents and probes."""
    _check_arguments(num_documents, seed)
    maker = _Maker(random.Random(seed))
    schedule = _template_schedule(num_documents, maker.rng)
    taken_entities: set[str] = set()
    return [_make_document(i, template, maker, taken_entities)
            for i, template in enumerate(schedule)]


def probe_rows(documents: Iterable[SyntheticDocument]) -> list[dict]:
    """Rows in the JSONL format of ../shared/data/bioasq_mcq/, so the same evaluation reads both.

    {"question", "options", "correct_index", "meta": {"answer", "context", "id", "kind", "doc_id",
    "genre"}}, where ``meta.context`` is the document text and ``meta.id`` a running int index.
    """
    rows = []
    for doc in documents:
        for probe in doc.probes:
            meta = {"answer": probe.answer, "context": doc.text, "id": len(rows),
                    "kind": probe.kind, "doc_id": doc.doc_id, "genre": doc.genre}
            rows.append({"question": probe.question, "options": list(probe.options),
                         "correct_index": probe.correct_index, "meta": meta})
    return rows


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8")


def write_corpus(out_dir: str | Path, num_documents: int = 64, seed: int = 0) -> dict[str, Path]:
    """Writes out_dir/documents.jsonl and out_dir/probes.jsonl; returns {"documents", "probes"}.

    documents.jsonl holds one {"id", "text", "genre", "entity_type"} per line (what adaptation
    trains on); probes.jsonl holds ``probe_rows`` (what evaluation asks).
    """
    documents = generate_corpus(num_documents, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"documents": out / "documents.jsonl", "probes": out / "probes.jsonl"}
    _write_jsonl(paths["documents"], ({"id": d.doc_id, "text": d.text, "genre": d.genre,
                                       "entity_type": d.entity_type} for d in documents))
    _write_jsonl(paths["probes"], probe_rows(documents))
    return paths


def add_cli(subparsers) -> None:
    """``disc-ray synth OUT_DIR``: write the built-in corpus (documents.jsonl + probes.jsonl)."""
    parser = subparsers.add_parser("synth", help="write the built-in synthetic corpus and its probes as JSONL")
    parser.add_argument("out_dir")
    parser.add_argument("--num-documents", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)

    def run(args, rest) -> int:
        paths = write_corpus(args.out_dir, num_documents=args.num_documents, seed=args.seed)
        print(f"wrote {args.num_documents} documents to {paths['documents']} and their probes to {paths['probes']}")
        return 0

    parser.set_defaults(run=run)
