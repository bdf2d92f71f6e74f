"""Field-level precision/recall/F1 with the documented normalisation."""

from __future__ import annotations

import pytest

from finetune.evaluate import parse_answer
from toolkit.metrics import field_units, normalise, score_answers, score_example


@pytest.mark.parametrize(
    ("value", "group", "name", "expected"),
    [
        # case and surrounding whitespace do not matter
        pytest.param("  Made In ITALY ", "", "", "made in italy", id="case-space"),
        # inner runs of whitespace collapse
        pytest.param("hot\n  surface", "", "", "hot surface", id="inner-space"),
        # full-width characters fold to ASCII (NFKC)
        pytest.param("ＣＥ", "", "", "ce", id="nfkc"),
        # barcodes compare by digits only
        pytest.param("4 006381-333931", "identifiers", "gtin", "4006381333931", id="gtin-digits"),
        # other identifiers keep their punctuation
        pytest.param("KT-2041", "identifiers", "model_number", "kt-2041", id="model-keeps-dash"),
    ],
)
def test_normalise(value, group, name, expected):
    assert normalise(value, group, name) == expected


REFERENCE = {
    "identifiers": {"gtin": "4006381333931", "model_number": "KT-2041"},
    "regulatory_safety": {"certification_marks": ["CE", "UKCA"]},
}


@pytest.mark.parametrize(
    ("predicted", "tp", "n_pred", "n_ref"),
    [
        # exact answer: everything right
        pytest.param(REFERENCE, 4, 4, 4, id="exact"),
        # list order and case do not matter (sets)
        pytest.param(
            {**REFERENCE, "regulatory_safety": {"certification_marks": ["ukca", "ce"]}},
            4,
            4,
            4,
            id="list-as-set",
        ),
        # a missing field costs recall only
        pytest.param({"identifiers": {"gtin": "4006381333931"}}, 1, 1, 4, id="missing-fields"),
        # an extra (invented) field costs precision only
        pytest.param(
            {**REFERENCE, "origin_production": {"country_of_origin": "China"}},
            4,
            5,
            4,
            id="extra-field",
        ),
        # a wrong value costs both
        pytest.param(
            {**REFERENCE, "identifiers": {"gtin": "4006381333930", "model_number": "KT-2041"}},
            3,
            4,
            4,
            id="wrong-value",
        ),
        # an unparseable answer predicts nothing
        pytest.param(None, 0, 0, 4, id="invalid-json"),
        # a group that is not an object is ignored, not crashed on
        pytest.param({"identifiers": "4006381333931"}, 0, 0, 4, id="group-not-object"),
    ],
)
def test_score_example_counts(predicted, tp, n_pred, n_ref):
    counts = score_example(predicted, REFERENCE)
    assert sum(c.tp for c in counts.values()) == tp
    assert sum(c.predicted for c in counts.values()) == n_pred
    assert sum(c.reference for c in counts.values()) == n_ref


def test_score_answers_micro_and_groups():
    scores = score_answers(
        [REFERENCE, {"identifiers": {"gtin": "4006381333931"}}, None],
        [REFERENCE, REFERENCE, REFERENCE],
        [True, True, False],
    )
    result = scores.as_dict()
    assert result["examples"] == 3
    assert result["json_valid_rate"] == pytest.approx(2 / 3, abs=1e-4)
    micro = result["micro"]
    assert (micro["tp"], micro["predicted"], micro["reference"]) == (5, 5, 12)
    assert micro["precision"] == 1.0
    assert micro["recall"] == pytest.approx(5 / 12, abs=1e-4)
    assert micro["f1"] == pytest.approx(2 * (5 / 12) / (1 + 5 / 12), abs=1e-4)
    assert result["groups"]["regulatory_safety"]["reference"] == 6
    assert result["fields"]["identifiers.gtin"]["tp"] == 2


def test_field_units_list_elements_are_separate_units():
    units = field_units({"regulatory_safety": {"certification_marks": ["CE", "CE ", "FCC"]}})
    assert units == {
        ("regulatory_safety", "certification_marks", "ce"),
        ("regulatory_safety", "certification_marks", "fcc"),
    }


@pytest.mark.parametrize(
    ("text", "value", "strict"),
    [
        # a clean answer is strictly valid
        pytest.param('{"a": {"b": "c"}}', {"a": {"b": "c"}}, True, id="valid"),
        # a code fence around valid JSON still counts as valid JSON
        pytest.param('```json\n{"a": {"b": "c"}}\n```', {"a": {"b": "c"}}, True, id="fenced"),
        # truncated: repaired
        pytest.param('{"a": {"b": "c"', {"a": {"b": "c"}}, False, id="truncated"),
        # garbage: nothing
        pytest.param("<image_soft_token> banana", None, False, id="garbage"),
    ],
)
def test_parse_answer(text, value, strict):
    assert parse_answer(text) == (value, strict)
