"""Explanation sentences from an :class:`~sxai_plugins.explain.trust.Assessment`, driven by rule DATA.

The built-in ``english`` template follows Extended Data Table 1 of the paper:

======================  ==========================================================
ΔmaxP                   verdict
======================  ==========================================================
[−∞, 0.2)               "It may be a {class}, but I am not sure."  (no reasons)
[0.2, 0.5)              "It is probably a {class} mainly because …"
[0.5, +∞)               "I am sure it is a {class} mainly because …"
======================  ==========================================================

Each concept of the predicted class is placed by its P (the predicted class's space) and its ΔP:

- P ≤ 0.2: not mentioned; (0.2, 0.5]: plain ("it has a nose"); > 0.5: "vivid";
- ΔP < 0.2: no semantic support; [0.2, 0.35): "perhaps"; [0.35, 0.5]: "something like";
  > 0.5: "obviously".
- A vivid concept without semantic support (ΔP < 0.2) is "a little confusing"; a plain one without
  support is not mentioned (the table's "None").

**Boundaries** follow the issue's wording literally: "> 0.5" is strict everywhere (ΔmaxP = 0.5 is
"probably", P = 0.5 is plain, ΔP = 0.5 is "something like"), "P ≤ 0.2 is not mentioned" (P = 0.2 is
not mentioned), and "< 0.2" bands end below 0.2 (ΔmaxP = 0.2 is "probably", ΔP = 0.2 "perhaps").
A band's ``inclusive`` flag says whether a value equal to its ``lower`` bound belongs to it. Values are rounded to ``Rules.decimals`` places first, so float noise such
as 0.7 − 0.5 = 0.19999999999999996 lands where the printed numbers say it should.

Concepts in the same (position, semanteme) cell share one clause, listed in the order of the
spaces ("its vivid eyes and nose, which are a cat's eyes and nose obviously"); clauses come
strongest first (vivid before plain, then by ΔP band), confusing concepts last. The engine (:class:`RuleTemplate`) reads everything
from a :class:`Rules` instance, so a plugin can reuse it with other thresholds or words; see
``tests/fixtures/terse_template`` for one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from ..plugin.hookspecs import hookimpl

if TYPE_CHECKING:  # the rules read assessments; making them (torch) is trust's business
    from .trust import Assessment, ConceptEvidence

T = TypeVar("T")


@dataclass(frozen=True)
class Band(Generic[T]):
    """A value band: from ``lower`` (included when ``inclusive``) up to the next band's ``lower``."""

    lower: float
    value: T
    inclusive: bool = True


@dataclass(frozen=True)
class Verdict:
    """The opening of the sentence for one ΔmaxP band.

    ``text`` may use ``{cls}``, ``{a_cls}`` (with its article) and ``{reasons}``. When
    ``explain`` is false no reasons are given. ``text_without_reasons`` is used when reasons are
    wanted but no concept qualifies.
    """

    key: str
    text: str
    explain: bool = True
    text_without_reasons: str = ""


@dataclass(frozen=True)
class Position:
    """How a concept is introduced for one P band (None in a band means: not mentioned).

    ``subject`` may use ``{concepts}`` (bare: "eyes and nose") and ``{concepts_a}`` (with
    articles: "eyes and a nose"). ``confusing`` says whether a concept in this band without
    semantic support is called confusing (else it is left out).
    """

    key: str
    subject: str
    confusing: bool = False


@dataclass(frozen=True)
class Rules:
    """Everything a :class:`RuleTemplate` needs: thresholds as bands, and the words.

    Bands are sorted by ``lower``; a value below the first band's lower bound falls in the first.
    """

    verdict: tuple[Band[Verdict], ...]
    position: tuple[Band[Position | None], ...]
    semanteme: tuple[Band[str | None], ...]  # patterns with {x}; None: no semantic support
    clause: str = "{subject}, which {be} {semanteme}"
    owner: str = "{a_cls}'s {concepts}"
    confusing: str = "However, its {concepts} {be} a little confusing."
    clause_separator: str = ", "
    last_clause_separator: str = ", and "
    list_separator: str = ", "
    last_list_separator: str = " and "
    singular_be: str = "is"
    plural_be: str = "are"
    plural_suffix: str = "s"
    article: str = "a"
    article_vowel: str = "an"
    vowels: str = "aeiou"
    decimals: int = 6
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("verdict", "position", "semanteme"):
            bands = getattr(self, name)
            if not bands:
                raise ValueError(f"Rules.{name} needs at least one band")
            lowers = [b.lower for b in bands]
            if lowers != sorted(lowers) or len(set(lowers)) != len(lowers):
                raise ValueError(
                    f"Rules.{name}: band lower bounds must strictly increase, got {lowers}"
                )


def pick(bands: Sequence[Band[T]], value: float) -> tuple[int, T]:
    """(index, value) of the band holding ``value``: the last band whose lower bound it reaches."""
    index = 0
    for i, band in enumerate(bands):
        if value > band.lower or (band.inclusive and value == band.lower):
            index = i
    return index, bands[index].value


@dataclass(frozen=True)
class ConceptJudgement:
    concept: str
    position: str | None  # Position.key, None: not mentioned
    semanteme: str | None  # the semanteme pattern, None: no support
    semanteme_band: int
    confusing: bool

    @property
    def mentioned(self) -> bool:
        return self.position is not None and (self.semanteme is not None or self.confusing)


@dataclass(frozen=True)
class Judgement:
    """Where an assessment falls in the rules: the verdict and every concept's cell."""

    verdict: Verdict
    concepts: tuple[ConceptJudgement, ...]


def judge(assessment: Assessment, rules: Rules) -> Judgement:
    """Place the assessment in the rule table (no wording yet)."""
    delta_max = assessment.delta_max_p
    level = -math.inf if delta_max is None else round(delta_max, rules.decimals)
    _, verdict = pick(rules.verdict, level)
    # concepts keep the order of the spaces, so a clause reads "eyes, nose and legs" as loaded
    return Judgement(verdict, tuple(_judge_concept(e, rules) for e in assessment.concepts))


def _judge_concept(evidence: ConceptEvidence, rules: Rules) -> ConceptJudgement:
    _, position = pick(rules.position, round(evidence.probability, rules.decimals))
    band, semanteme = pick(rules.semanteme, round(evidence.delta, rules.decimals))
    if position is None:
        return ConceptJudgement(evidence.concept, None, None, band, False)
    confusing = semanteme is None and position.confusing
    return ConceptJudgement(evidence.concept, position.key, semanteme, band, confusing)


class RuleTemplate:
    """An explanation template that renders sentences from :class:`Rules`."""

    def __init__(self, name: str, rules: Rules, description: str = "") -> None:
        self.name = name
        self.rules = rules
        self.description = description

    def __repr__(self) -> str:
        return f"RuleTemplate({self.name!r})"

    # ----------------------------------------------------------------------------- grammar
    def _plural(self, concepts: Sequence[str]) -> bool:
        return len(concepts) > 1 or concepts[0].endswith(self.rules.plural_suffix)

    def _join(self, items: Sequence[str], sep: str, last: str) -> str:
        if len(items) == 1:
            return items[0]
        return sep.join(items[:-1]) + last + items[-1]

    def _list(self, items: Sequence[str]) -> str:
        return self._join(items, self.rules.list_separator, self.rules.last_list_separator)

    def _with_article(self, word: str) -> str:
        r = self.rules
        return f"{r.article_vowel if word[:1].lower() in r.vowels else r.article} {word}"

    def _words(self, cls: str, concepts: Sequence[str]) -> dict[str, str]:
        r = self.rules
        with_articles = [
            c if c.endswith(r.plural_suffix) else self._with_article(c) for c in concepts
        ]
        return {
            "cls": cls,
            "a_cls": self._with_article(cls),
            "concepts": self._list(concepts),
            "concepts_a": self._list(with_articles),
            "be": r.plural_be if self._plural(concepts) else r.singular_be,
            **r.extra,
        }

    # ------------------------------------------------------------------------------ render
    def reasons(self, assessment: Assessment, judgement: Judgement) -> tuple[list[str], list[str]]:
        """(reason clauses, confusing concepts) in the order they are said."""
        cells: dict[tuple[int, int], list[str]] = {}
        position_rank = {
            band.value.key: i
            for i, band in enumerate(self.rules.position)
            if band.value is not None
        }
        confusing = []
        for c in judgement.concepts:
            if c.confusing:
                confusing.append(c.concept)
            elif c.mentioned:
                cells.setdefault((position_rank[c.position], c.semanteme_band), []).append(
                    c.concept
                )
        positions = {
            band.value.key: band.value for band in self.rules.position if band.value is not None
        }
        rank_to_key = {v: k for k, v in position_rank.items()}
        clauses = []
        # strongest cells first: vivid before plain, then by semantic support
        for (p_rank, s_band), concepts in sorted(
            cells.items(), key=lambda kv: (-kv[0][0], -kv[0][1])
        ):
            words = self._words(assessment.predicted, concepts)
            position = positions[rank_to_key[p_rank]]
            pattern = self.rules.semanteme[s_band].value
            owner = self.rules.owner.format(**words)
            clauses.append(
                self.rules.clause.format(
                    subject=position.subject.format(**words),
                    semanteme=pattern.format(x=owner, **words),
                    **words,
                )
            )
        return clauses, confusing

    def render(self, assessment: Assessment) -> str:
        """The explanation sentence(s) for one assessment."""
        judgement = judge(assessment, self.rules)
        verdict = judgement.verdict
        base = self._words(assessment.predicted, [assessment.predicted])
        if not verdict.explain:
            return verdict.text.format(reasons="", **base)
        clauses, confusing = self.reasons(assessment, judgement)
        if clauses:
            reasons = self._join(
                clauses, self.rules.clause_separator, self.rules.last_clause_separator
            )
            text = verdict.text.format(reasons=reasons, **base)
        else:
            text = (verdict.text_without_reasons or verdict.text).format(reasons="", **base)
        if confusing:
            text += " " + self.rules.confusing.format(
                **self._words(assessment.predicted, confusing)
            )
        return text


ENGLISH_RULES = Rules(
    verdict=(
        Band(-math.inf, Verdict("unsure", "It may be {a_cls}, but I am not sure.", explain=False)),
        Band(
            0.2,
            Verdict(
                "probably",
                "It is probably {a_cls} mainly because {reasons}.",
                text_without_reasons="It is probably {a_cls}.",
            ),
        ),
        Band(
            0.5,
            Verdict(
                "sure",
                "I am sure it is {a_cls} mainly because {reasons}.",
                text_without_reasons="I am sure it is {a_cls}.",
            ),
            inclusive=False,
        ),
    ),
    position=(
        Band(-math.inf, None),
        Band(0.2, Position("plain", "it has {concepts_a}"), inclusive=False),
        Band(0.5, Position("vivid", "its vivid {concepts}", confusing=True), inclusive=False),
    ),
    semanteme=(
        Band(-math.inf, None),
        Band(0.2, "perhaps {x}"),
        Band(0.35, "something like {x}"),
        Band(0.5, "{x} obviously", inclusive=False),
    ),
)

english = RuleTemplate(
    "english", ENGLISH_RULES, "the paper's rules (Extended Data Table 1), in English"
)
DEFAULT_TEMPLATE = "english"


@hookimpl
def sxai_explanation_templates() -> list[RuleTemplate]:
    return [english]
