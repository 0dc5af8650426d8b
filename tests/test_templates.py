"""Explanation templates: the paper's rule table, every band and every boundary, and plugins."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

from sxai_plugins import (
    PluginNotFoundError,
    get_explanation_template,
    get_plugin_manager,
    register_plugin,
)
from sxai_plugins.explain.templates import (
    ENGLISH_RULES,
    Band,
    Rules,
    RuleTemplate,
    Verdict,
    english,
    judge,
)
from sxai_plugins.explain.trust import assessment_from_probabilities as assessment

FIXTURE = Path(__file__).parent / "fixtures" / "terse_template"


def render(predicted: str = "cat", **p: float) -> str:
    return english.render(assessment(predicted, {k.replace("_", "."): v for k, v in p.items()}))


# ------------------------------------------------------------------------- verdict by ΔmaxP
@pytest.mark.parametrize(
    ("delta_max", "opening"),
    [
        (0.0, "It may be a cat, but I am not sure."),
        (0.1999, "It may be a cat, but I am not sure."),
        (0.2, "It is probably a cat mainly because"),  # "< 0.2" is unsure: 0.2 is probably
        (0.3499, "It is probably a cat mainly because"),
        (0.35, "It is probably a cat mainly because"),
        (0.4999, "It is probably a cat mainly because"),
        (0.5, "It is probably a cat mainly because"),  # "> 0.5" is sure: 0.5 is still probably
        (0.5001, "I am sure it is a cat mainly because"),
        (1.0, "I am sure it is a cat mainly because"),
    ],
)
def test_verdict_band_by_delta_max_p(delta_max, opening):
    sentence = render(cat_eyes=1.0, dog_eyes=1.0 - delta_max)
    assert sentence.startswith(opening)
    if "not sure" in opening:
        assert sentence == opening  # the unsure verdict gives no reasons


def test_unsure_verdict_gives_no_reasons_even_for_vivid_concepts():
    assert render(cat_eyes=0.9, dog_eyes=0.8) == "It may be a cat, but I am not sure."


# --------------------------------------------------------------------- position by P
# nose carries the P under test (its rival is 0, so ΔP = P); eyes fix the verdict at "sure"
@pytest.mark.parametrize(
    ("p", "clause"),
    [
        (0.1, None),
        (0.1999, None),
        (0.2, None),  # "P <= 0.2 is not mentioned"
        (0.2001, "it has a nose, which is perhaps a cat's nose"),
        (0.34, "it has a nose, which is perhaps a cat's nose"),
        (0.35, "it has a nose, which is something like a cat's nose"),
        (0.4999, "it has a nose, which is something like a cat's nose"),
        (0.5, "it has a nose, which is something like a cat's nose"),  # "> 0.5" is vivid
        # vivid above 0.5: the same cell as the eyes, so they share a clause
        (0.5001, "its vivid eyes and nose, which are a cat's eyes and nose obviously"),
        (0.9, "its vivid eyes and nose, which are a cat's eyes and nose obviously"),
    ],
)
def test_position_band_by_p(p, clause):
    sentence = render(cat_eyes=1.0, dog_eyes=0.0, cat_nose=p, dog_nose=0.0)
    if clause is None:
        assert "nose" not in sentence
        assert (
            sentence
            == "I am sure it is a cat mainly because its vivid eyes, which are a cat's eyes obviously."
        )
    else:
        assert clause in sentence


# ------------------------------------------------------------------ semanteme by ΔP (vivid P)
@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (-0.3, "However, its legs are a little confusing."),
        (0.0, "However, its legs are a little confusing."),
        (0.1999, "However, its legs are a little confusing."),
        (
            0.2,
            "its vivid legs, which are perhaps a cat's legs",
        ),  # "< 0.2" is confusing: 0.2 is perhaps
        (0.3499, "its vivid legs, which are perhaps a cat's legs"),
        # same cell as the eyes from here: one clause
        (0.35, "its vivid eyes and legs, which are something like a cat's eyes and legs"),
        (0.4999, "its vivid eyes and legs, which are something like a cat's eyes and legs"),
        (0.5, "its vivid eyes and legs, which are something like a cat's eyes and legs"),  # "> 0.5"
        (0.5001, "its vivid legs, which are a cat's legs obviously"),
    ],
)
def test_semanteme_band_by_delta_p(delta, words):
    # the eyes (ΔP 0.4: "something like") keep the verdict at "probably" unless legs reach 0.5
    sentence = render(cat_eyes=0.9, dog_eyes=0.5, cat_legs=0.9, dog_legs=0.9 - delta)
    opening = "I am sure it is a cat" if delta > 0.5 else "It is probably a cat"
    assert sentence.startswith(opening + " mainly because")
    assert words in sentence
    assert sentence.count("legs") == (1 if "confusing" in words else 2)


def test_plain_concept_without_semantic_support_is_not_mentioned():
    # the table's "None" cell: 0.2 <= P < 0.5 and ΔP < 0.2
    sentence = render(cat_eyes=0.9, dog_eyes=0.3, cat_nose=0.45, dog_nose=0.3)
    assert "nose" not in sentence and "confusing" not in sentence


def test_float_noise_at_a_boundary_follows_the_printed_numbers():
    # 0.7 - 0.5 == 0.19999999999999996 in floating point; it must count as 0.2
    assert 0.7 - 0.5 < 0.2
    assert render(cat_eyes=0.7, dog_eyes=0.5).startswith("It is probably a cat")


# ----------------------------------------------------------------------------- whole sentences
def test_paper_example_sure_with_grouped_concepts():
    sentence = render(cat_eyes=0.95, dog_eyes=0.1, cat_nose=0.9, dog_nose=0.2)
    assert sentence == (
        "I am sure it is a cat mainly because its vivid eyes and nose, which are "
        "a cat's eyes and nose obviously."
    )


def test_paper_example_probably_with_a_confusing_concept():
    # Fig. 4b: vivid eyes (something like), nose (something like), legs confusing
    sentence = render(
        "dog", dog_eyes=0.8, cat_eyes=0.4, dog_nose=0.4, cat_nose=0.0, dog_legs=0.9, cat_legs=0.85
    )
    assert sentence == (
        "It is probably a dog mainly because its vivid eyes, which are something like a dog's eyes, "
        "and it has a nose, which is something like a dog's nose. However, its legs are a little confusing."
    )


def test_three_concepts_in_one_cell_are_listed():
    sentence = render(
        cat_eyes=0.9, dog_eyes=0.1, cat_nose=0.9, dog_nose=0.1, cat_legs=0.9, dog_legs=0.1
    )
    assert (
        "its vivid eyes, nose and legs, which are a cat's eyes, nose and legs obviously" in sentence
    )


def test_any_number_of_classes_and_articles():
    sentence = render("owl", owl_eyes=0.9, cat_eyes=0.2, dog_eyes=0.55, eagle_eyes=0.1)
    assert (
        sentence
        == "It is probably an owl mainly because its vivid eyes, which are something like an owl's eyes."
    )


def test_predicted_class_without_spaces_is_unsure():
    assert render("horse", cat_eyes=0.9, dog_eyes=0.1) == "It may be a horse, but I am not sure."


def test_judge_places_each_concept():
    j = judge(
        assessment(
            "cat",
            {
                "cat.eyes": 0.9,
                "dog.eyes": 0.1,
                "cat.nose": 0.3,
                "dog.nose": 0.05,
                "cat.legs": 0.6,
                "dog.legs": 0.6,
            },
        ),
        ENGLISH_RULES,
    )
    assert j.verdict.key == "sure"
    cells = {c.concept: (c.position, c.semanteme, c.confusing) for c in j.concepts}
    assert cells == {
        "eyes": ("vivid", "{x} obviously", False),
        "nose": ("plain", "perhaps {x}", False),
        "legs": ("vivid", None, True),
    }


# ----------------------------------------------------------------------------- rules as data
def test_engine_reads_other_thresholds_and_words():
    strict = Rules(
        verdict=(
            Band(-math.inf, Verdict("no", "Maybe {cls}.", explain=False)),
            Band(0.6, Verdict("yes", "Certainly {cls}: {reasons}.")),
        ),
        position=ENGLISH_RULES.position,
        semanteme=(Band(-math.inf, None), Band(0.6, "clearly {x}")),
    )
    template = RuleTemplate("strict", strict)
    a = assessment("cat", {"cat.eyes": 0.9, "dog.eyes": 0.35})
    assert english.render(a).startswith("I am sure")
    assert template.render(a) == "Maybe cat."
    a = assessment("cat", {"cat.eyes": 0.9, "dog.eyes": 0.2})
    assert template.render(a) == "Certainly cat: its vivid eyes, which are clearly a cat's eyes."


def test_rules_must_have_increasing_bands():
    with pytest.raises(ValueError, match="strictly increase"):
        Rules(
            verdict=ENGLISH_RULES.verdict,
            position=ENGLISH_RULES.position,
            semanteme=(Band(0.5, "a {x}"), Band(0.2, "b {x}")),
        )


# ------------------------------------------------------------------------------ registration
def test_english_is_registered_by_default():
    assert get_explanation_template("english") is english
    with pytest.raises(PluginNotFoundError, match="english"):
        get_explanation_template("klingon")


@pytest.fixture
def terse():
    sys.path.insert(0, str(FIXTURE))
    try:
        module = importlib.import_module("sxai_terse_template")
        name = "test-terse-template"
        if get_plugin_manager().get_plugin(name) is None:
            register_plugin(module, name=name)
        yield module
        get_plugin_manager().unregister(name=name)
    finally:
        sys.path.remove(str(FIXTURE))


def test_a_plugin_template_is_found_by_name_and_reuses_the_engine(terse):
    template = get_explanation_template("terse")
    assert template is terse.terse
    a = assessment(
        "dog",
        {
            "dog.eyes": 0.8,
            "cat.eyes": 0.1,
            "dog.nose": 0.4,
            "cat.nose": 0.0,
            "dog.legs": 0.9,
            "cat.legs": 0.85,
        },
    )
    assert template.render(a) == "dog (sure: eyes!+; nose~) [unclear: legs]"
    # its own thresholds: ΔmaxP 0.25 is "probably" in English but below terse's 0.3
    b = assessment("cat", {"cat.eyes": 0.9, "dog.eyes": 0.65})
    assert english.render(b).startswith("It is probably a cat")
    assert template.render(b) == "cat?"
