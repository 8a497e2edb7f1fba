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
sentence splitter (blingfire) cuts exactly where the templates do.
"""

from __future__ import annotations

import json
import random
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

_ONSETS = ("b", "br", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "tr", "v",
           "z", "th")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ei")
_INNER_CODAS = ("", "", "", "", "n", "r", "l", "s")  # keeps consonant clusters short
_FINAL_CODAS = ("", "n", "r", "l", "s", "th", "nd", "rk", "x")
_FIRST_NAMES = ("Amara", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines",
                "Jonas", "Keiko", "Lars", "Maren", "Nikos", "Olga", "Pavel", "Rosa", "Sanjay",
                "Tomas", "Ulla", "Vera", "Wim", "Yara", "Zofia", "Anders", "Beatriz", "Cyril",
                "Dagny", "Emil", "Freya", "Ilse", "Joost", "Lena", "Mateo", "Nadia", "Oskar",
                "Priya", "Rafael", "Sigrid", "Teodor")
_SURNAME_ENDINGS = ("", "", "ek", "sen", "berg", "ini", "ard", "ova")
_PLACE_ENDINGS = ("", "", "holm", "vale", "mark", "stad", "wick", "ford", "mere", "by")


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


_NEWS_ACQUISITION = _Template(
    name="news_acquisition", genre="news", entity_type="organisation",
    make_values=_news_acquisition_values,
    sentences=(
        ("{name}, a maker of {product} based in {city}, has agreed to buy its smaller rival "
         "{target} for {price}.",
         "The {city} company {name} said on Monday that it will acquire {target}, a fellow maker "
         "of {product}, in a deal worth {price}."),
        ("{target} was founded in {founded} and has grown steadily since then.",
         "Founded in {founded}, {target} has long been one of the better known names in the "
         "trade."),
        ("{target} employs {staff}, most of them in engineering and production.",
         "According to its latest annual report, {target} employs {staff}."),
        ("Chief executive {ceo} said the combined group would be able to invest far more in "
         "research.",
         "{ceo}, the chief executive of {name}, described the purchase as a natural next step."),
        ("{name} already runs {plants} in Europe and Asia, and the deal would add two more.",
         "The buyer currently operates {plants}, and the takeover would add two more sites."),
        ("The deal still needs the approval of the shareholders of {target}.",
         "Shareholders of {target} will vote on the offer later this year."),
        ("Competition regulators in {city} are expected to review the agreement before it closes.",
         "Officials in {city} welcomed the news, saying the deal should protect local jobs."),
        ("In summary, {name} of {city} plans to pay {price} for {target}.",
         "If approved, the purchase of {target} for {price} would be the largest deal in the "
         "history of {name}."),
    ),
    fillers=(
        "Neither company disclosed further financial details of the agreement.",
        "Analysts said the move reflected a wider wave of consolidation in the industry.",
        "Trade unions said they would seek assurances that no sites would close.",
        "Shares in several rival firms rose modestly after the announcement.",
    ),
    restated={
        "target": "Which company did {name} agree to acquire?",
        "city": "In which city is {name} based?",
        "price": "How much is {name} paying for its acquisition?",
    },
    single={
        "ceo": "Who is the chief executive of {name}?",
        "staff": "How many people does the company that {name} is acquiring employ?",
        "founded": "In which year was the company that {name} is acquiring founded?",
        "plants": "How many factories does {name} currently operate?",
    },
)


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


_NEWS_APPOINTMENT = _Template(
    name="news_appointment", genre="news", entity_type="person",
    make_values=_news_appointment_values,
    sentences=(
        ("{name} has been appointed director of the {institute} in {city}, the institute "
         "announced on Tuesday.",
         "The {institute} in {city} has named {name} as its new director."),
        ("{surname} succeeds {predecessor}, who is retiring after more than a decade in the post.",
         "{surname} takes over from {predecessor}, who led the institute for eleven years."),
        ("Before the appointment, {surname} ran a research group at the {university}.",
         "{surname} previously headed a laboratory at the {university}."),
        ("{surname} is best known for leading the {project}, a long-running study of coastal "
         "sediments.",
         "Within the field, {surname} is known mainly as the founder of the {project}, which "
         "tracks changes in coastal sediments."),
        ("The institute employs {staff} and has an annual budget of {budget}.",
         "With {staff} and a yearly budget of {budget}, the institute is among the largest of "
         "its kind."),
        ("Colleagues in {city} said the choice had been widely expected.",
         "Researchers in {city} welcomed the decision."),
        ("{surname} will take up the post at the {institute} next month and plans to expand the "
         "{project}.",
         "In summary, the {institute} has chosen {name}, the scientist behind the {project}, as "
         "its next director."),
    ),
    fillers=(
        "The selection committee interviewed candidates from several countries.",
        "The new director is expected to set out a research strategy within the first year.",
        "Funding agencies have pressed the institute to share more of its data openly.",
        "Staff representatives said they looked forward to working with the new leadership.",
    ),
    restated={
        "institute": "Which institute has appointed {name} as its director?",
        "city": "In which city is the institute that appointed {name} located?",
        "project": "Which project is {name} best known for?",
    },
    single={
        "predecessor": "Whom does {name} succeed as director?",
        "university": "Where did {name} work before the appointment?",
        "budget": "What is the annual budget of the institute that {name} will lead?",
        "staff": "How many researchers does the institute that {name} will lead employ?",
    },
)


def _news_bridge_values(m: _Maker) -> dict[str, _Value]:
    return {
        "name": m.unique(m.place), "river": m.unique(lambda: f"{m.word()} River"),
        "firm": m.unique(lambda: f"{m.word()} Construction"),
        "cost": m.number(30, 400, "{} million euros"),
        "length": m.number(180, 1400, "{:,} metres", step=10), "engineer": m.unique(m.person),
        "ferry_year": m.year(1890, 1975),
        "vehicles": m.number(4000, 40000, "{:,} vehicles", step=100),
    }


_NEWS_BRIDGE = _Template(
    name="news_bridge", genre="news", entity_type="place",
    make_values=_news_bridge_values,
    sentences=(
        ("A new road bridge across the {river} opened in {name} on Saturday after four years of "
         "construction.",
         "After four years of work, {name} on Saturday opened a new road bridge over the {river}."),
        ("The crossing was built by {firm} at a cost of {cost}.",
         "Construction firm {firm} completed the crossing for {cost}."),
        ("At {length} long, it is the longest road bridge in the region.",
         "The bridge is {length} long and carries two lanes in each direction."),
        ("Chief engineer {engineer} said the design had to withstand strong spring floods on the "
         "{river}.",
         "According to chief engineer {engineer}, the piers were built to resist the spring floods "
         "of the {river}."),
        ("Planners expect around {vehicles} to use the bridge every day.",
         "Traffic models suggest that about {vehicles} will cross it each day."),
        ("The bridge replaces a ferry service that had carried passengers from {name} since "
         "{ferry_year}.",
         "Until now, residents relied on a ferry that had operated since {ferry_year}."),
        ("{firm} also built the new water treatment plant of the town.",
         "It is the second major project in the town for {firm}, which also built its water "
         "treatment plant."),
        ("Local officials said the bridge, which cost {cost}, would shorten journeys across the "
         "{river} for thousands of residents.",
         "In summary, the crossing built by {firm} for {cost} now links both banks of the {river} "
         "at {name}."),
    ),
    fillers=(
        "Hundreds of people walked across the deck before it opened to traffic.",
        "Shop owners in the old centre hope the bridge will bring more visitors.",
        "Work on new cycle paths leading to the bridge will continue until the autumn.",
        "The old ferry landing is to be turned into a small public park.",
    ),
    restated={
        "river": "Which river does the new bridge in {name} cross?",
        "firm": "Which company built the new bridge in {name}?",
        "cost": "How much did the new bridge in {name} cost?",
    },
    single={
        "length": "How long is the new bridge in {name}?",
        "engineer": "Who was the chief engineer of the new bridge in {name}?",
        "ferry_year": "Since which year had a ferry operated at {name} before the bridge opened?",
        "vehicles": "How many vehicles are expected to use the new bridge in {name} each day?",
    },
)


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


_ENCYCLOPEDIA_TOWN = _Template(
    name="encyclopedia_town", genre="encyclopedia", entity_type="place",
    make_values=_encyclopedia_town_values,
    sentences=(
        ("{name} is a market town in the {region} region, on the east bank of the {river}.",
         "{name} is a town in the {region} region that grew up on the banks of the {river}."),
        ("The town has a population of {population}, according to the most recent census.",
         "At the most recent census, {name} had a population of {population}."),
        ("The settlement was first recorded in {founded} as a crossing point for salt traders.",
         "Records first mention {name} in {founded}, when it was a small crossing point for salt "
         "traders."),
        ("Its best known landmark is the {landmark}, which was completed in the eighteenth "
         "century.",
         "The town is best known for the {landmark}, an eighteenth-century building on the old "
         "market square."),
        ("The local economy is based on {industry}.", "Most residents work in {industry}."),
        ("Since the late twentieth century {name} has been twinned with {twin}.",
         "{name} has a long-standing twinning partnership with {twin}."),
        ("Visitors to the {landmark} can climb to a gallery overlooking the rooftops.",
         "The {landmark} is open to visitors throughout the summer."),
        ("{name} is the largest town in {region} after the regional capital.",
         "Within {region}, only the regional capital is larger than {name}."),
        ("Today its {population} inhabitants make {name} one of the busiest communities in "
         "{region}.",
         "In summary, {name} is a town of {population} people in {region}, known above all for "
         "the {landmark}."),
    ),
    fillers=(
        "The old town centre is protected as a conservation area.",
        "A weekly market has been held on the main square for several centuries.",
        "The town is served by a regional railway line and two bus routes.",
    ),
    restated={
        "region": "In which region is {name} located?",
        "population": "What is the population of {name}?",
        "landmark": "What is the best known landmark of {name}?",
    },
    single={
        "founded": "In which year was {name} first recorded?",
        "river": "On which river does {name} lie?",
        "twin": "With which town is {name} twinned?",
    },
)


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


_ENCYCLOPEDIA_PERSON = _Template(
    name="encyclopedia_person", genre="encyclopedia", entity_type="person",
    make_values=_encyclopedia_person_values,
    sentences=(
        ("{name} is {profession} from {birthplace}, best known for the {kind} {work}.",
         "Born in {birthplace}, {name} is {profession} whose reputation rests largely on the "
         "{kind} {work}."),
        ("{surname} was born in {born} and later studied at the {university}.",
         "Born in {born}, {surname} trained at the {university}."),
        ("While studying, {surname} worked closely with {mentor}, who became a lifelong mentor.",
         "At university, {surname} was taught by {mentor}, an influential figure of the previous "
         "generation."),
        ("{work} was first unveiled in {birthplace} and soon attracted attention abroad.",
         "The public unveiling of {work} took place in {birthplace}."),
        ("Over a long career {surname} has completed {works}.",
         "The catalogue of {surname} now lists {works}."),
        ("In recognition of this output, {surname} received the {award}.",
         "{surname} was later awarded the {award}, the highest honour in the field."),
        ("The citation for the {award} singled out {work} as a landmark of its time.",
         "In summary, {name} of {birthplace} is remembered chiefly for {work} and for winning "
         "the {award}."),
    ),
    fillers=(
        "Critics have described the style as restrained but deeply personal.",
        "Several younger artists cite {surname} as an early influence.",
        "A retrospective exhibition toured three cities in the following decade.",
        "Much of the private correspondence has since been donated to a public archive.",
    ),
    restated={
        "birthplace": "Where is {name} from?",
        "work": "For which work is {name} best known?",
        "award": "Which award did {name} receive?",
    },
    single={
        "born": "In which year was {name} born?",
        "university": "Where did {name} study?",
        "mentor": "Who was the mentor of {name}?",
        "works": "How many works has {name} completed?",
    },
)


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


_ENCYCLOPEDIA_SPECIES = _Template(
    name="encyclopedia_species", genre="encyclopedia", entity_type="species",
    make_values=_encyclopedia_species_values,
    sentences=(
        ("{name} is a species of {group} found only in the {range}.",
         "The {group} {name} is endemic to the {range}."),
        ("It was first described by the naturalist {discoverer} in {described}.",
         "The species was formally described in {described} by {discoverer}."),
        ("Adults reach a length of about {length}, which makes it one of the larger members of "
         "its genus.",
         "Fully grown adults measure about {length} from head to tip."),
        ("The larvae feed almost exclusively on the {host}.",
         "Its larvae depend on the {host} as their only food plant."),
        ("Populations occur at altitudes of up to {altitude}.",
         "The species has been recorded at altitudes of up to {altitude}."),
        ("Females lay clutches of around {clutch} on the underside of leaves.",
         "Each female lays around {clutch} in a single season."),
        ("Because it depends on the {host}, the species is threatened by the drainage of wetlands "
         "in the {range}.",
         "Drainage of the wetlands where the {host} grows is the main threat to the species."),
        ("With a length of about {length}, {name} is easily recognised among the insects of the "
         "{range}.",
         "In summary, {name} is a {group} of the {range} that measures about {length} and feeds "
         "on the {host}."),
    ),
    fillers=(
        "Adults are active mainly at dusk during the warmer months.",
        "The species is listed as vulnerable by the regional conservation authority.",
        "Little is known about its behaviour during the winter.",
    ),
    restated={
        "range": "Where is {name} found?",
        "length": "How long are adults of {name}?",
        "host": "On which plant do the larvae of {name} feed?",
    },
    single={
        "discoverer": "Who first described {name}?",
        "described": "In which year was {name} first described?",
        "altitude": "Up to what altitude has {name} been recorded?",
        "clutch": "About how many eggs does a female of {name} lay?",
    },
)


def _abstract_compound_values(m: _Maker) -> dict[str, _Value]:
    return {
        "name": m.unique(m.compound), "enzyme": m.unique(m.enzyme),
        "precursor": m.unique(m.compound), "steps": m.number(3, 11, "{} steps"),
        "overall_yield": m.number(12, 68, "{} percent"),
        "ic50": m.number(4, 950, "{} nanomolar"),
        "melting": m.number(90, 290, "{} degrees Celsius"),
        "half_life": m.number(2, 36, "{} hours"),
    }


_ABSTRACT_COMPOUND = _Template(
    name="abstract_compound", genre="abstract", entity_type="compound",
    make_values=_abstract_compound_values,
    sentences=(
        ("We report the synthesis of {name}, a selective inhibitor of the enzyme {enzyme}.",
         "Inhibitors of the enzyme {enzyme} are of interest for treating chronic inflammation, "
         "and here we describe a new one, {name}."),
        ("We prepared {name} from {precursor} in {steps} with an overall yield of "
         "{overall_yield}.",
         "Starting from {precursor}, the synthesis required {steps} and gave the product in an "
         "overall yield of {overall_yield}."),
        ("In enzyme assays, {name} inhibited {enzyme} with a half-maximal inhibitory "
         "concentration of {ic50}.",
         "Against purified {enzyme}, {name} showed a half-maximal inhibitory concentration of "
         "{ic50}."),
        ("Closely related enzymes were inhibited at least fiftyfold more weakly.",
         "Selectivity over closely related enzymes exceeded fiftyfold."),
        ("The compound is a colourless crystalline solid that melts at {melting}.",
         "Purified {name} forms colourless crystals with a melting point of {melting}."),
        ("In plasma stability tests, the half-life of {name} was {half_life}.",
         "The compound remained stable in plasma, with a measured half-life of {half_life}."),
        ("In summary, {name} inhibits {enzyme} at {ic50}, and the {overall_yield} overall yield "
         "makes the route suitable for scale-up.",
         "These results establish {name} as a potent inhibitor of {enzyme}, active at {ic50} and "
         "accessible in {overall_yield} overall yield."),
    ),
    fillers=(
        "All intermediates were characterised by nuclear magnetic resonance and mass "
        "spectrometry.",
        "Docking calculations suggest that the inhibitor occupies the active site of the enzyme.",
        "No toxicity was observed in cultured liver cells at the concentrations tested.",
        "The route avoids toxic heavy-metal catalysts.",
    ),
    restated={
        "enzyme": "Which enzyme does {name} inhibit?",
        "ic50": "What is the half-maximal inhibitory concentration of {name}?",
        "overall_yield": "What is the overall yield of the synthesis of {name}?",
    },
    single={
        "precursor": "From which starting material is {name} prepared?",
        "steps": "How many steps does the synthesis of {name} require?",
        "melting": "At what temperature does {name} melt?",
        "half_life": "What is the plasma half-life of {name}?",
    },
)


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


_ABSTRACT_FIELD_STUDY = _Template(
    name="abstract_field_study", genre="abstract", entity_type="species",
    make_values=_abstract_field_study_values,
    sentences=(
        ("Populations of {name}, a ground-nesting bird endemic to the island of {island}, have "
         "declined sharply in recent decades.",
         "{name} is a ground-nesting bird found only on the island of {island}, where its numbers "
         "have fallen sharply."),
        ("We surveyed {sites} across {island} between {start} and {end}.",
         "Between {start} and {end} we monitored {sites} distributed across {island}."),
        ("Over this period the number of breeding pairs fell by {decline}.",
         "Breeding pairs declined by {decline} during the study."),
        ("In total we located and followed {nests}.",
         "Field teams found and monitored {nests} over the study period."),
        ("Nest cameras showed that most losses were caused by the {predator}, an introduced "
         "mammal.",
         "Camera traps identified the introduced {predator} as the main nest predator."),
        ("Nests protected by fencing were far less likely to be raided by the {predator}.",
         "Fenced nests were rarely visited by the {predator}."),
        ("Fieldwork was coordinated by the {team}.", "The {team} coordinated all fieldwork."),
        ("These results indicate that the {decline} decline on {island} is driven largely by "
         "predation from the {predator}.",
         "In summary, predation by the {predator} explains most of the {decline} fall in breeding "
         "pairs on {island}."),
    ),
    fillers=(
        "Weather conditions during the breeding season had little effect on nest survival.",
        "Habitat quality at the study sites remained broadly stable.",
        "Nest success did not differ between coastal and inland sites.",
    ),
    restated={
        "island": "On which island is {name} found?",
        "decline": "By how much did breeding pairs of {name} decline during the study?",
        "predator": "Which predator caused most nest losses of {name}?",
    },
    single={
        "sites": "How many sites were surveyed in the study of {name}?",
        "start": "In which year did the survey of {name} begin?",
        "nests": "How many nests of {name} were monitored?",
        "team": "Which organisation coordinated the fieldwork on {name}?",
    },
)


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


_ABSTRACT_DEVICE = _Template(
    name="abstract_device", genre="abstract", entity_type="device",
    make_values=_abstract_device_values,
    sentences=(
        ("We present {name}, a {wear} sensor that detects {condition} while drawing only "
         "{power}.",
         "Continuous screening for {condition} is limited by battery life, so we designed {name}, "
         "a {wear} sensor that draws only {power}."),
        ("The device weighs {weight} and runs for {battery} on a single charge.",
         "{name} weighs {weight}, and one charge lasts {battery}."),
        ("We evaluated {name} in a study of {participants} at {hospital}.",
         "A clinical evaluation enrolled {participants} at {hospital}."),
        ("Compared with clinical recordings, it identified {condition} with an accuracy of "
         "{accuracy}.",
         "Against reference recordings, {name} reached an accuracy of {accuracy}."),
        ("Signals are sampled at {rate} and processed on the device itself.",
         "The sensor samples at {rate} and performs all processing on the device."),
        ("Clinicians at {hospital} reported that the alerts were easy to interpret.",
         "Staff at {hospital} found the alerts easy to interpret."),
        ("In summary, {name} reaches {accuracy} accuracy at {power}, which makes long-term "
         "monitoring practical.",
         "With an accuracy of {accuracy} and a power draw of {power}, {name} is suited to "
         "monitoring at home over many weeks."),
    ),
    fillers=(
        "No participant reported skin irritation during the study.",
        "Most false alarms occurred during vigorous physical activity.",
        "The firmware and the analysis code are available to other research groups.",
        "The housing is sealed against sweat and rain.",
    ),
    restated={
        "power": "How much power does {name} draw?",
        "accuracy": "What accuracy did {name} reach against reference recordings?",
        "hospital": "At which hospital was {name} evaluated?",
    },
    single={
        "weight": "How much does {name} weigh?",
        "battery": "How long does {name} run on a single charge?",
        "participants": "How many participants took part in the evaluation of {name}?",
        "rate": "At what rate does {name} sample its signals?",
    },
)

TEMPLATES: tuple[_Template, ...] = (
    _NEWS_ACQUISITION, _NEWS_APPOINTMENT, _NEWS_BRIDGE,
    _ENCYCLOPEDIA_TOWN, _ENCYCLOPEDIA_PERSON, _ENCYCLOPEDIA_SPECIES,
    _ABSTRACT_COMPOUND, _ABSTRACT_FIELD_STUDY, _ABSTRACT_DEVICE,
)


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
