"""Field-level precision/recall/F1 with the documented normalisation, and per-item errors."""

from __future__ import annotations

import pytest

from toolkit.metrics import (
    field_errors,
    field_units,
    flatten_fields,
    normalise,
    score_answers,
    score_example,
)
from toolkit.schema import AttributeSchema


@pytest.mark.parametrize(
    ("value", "group", "name", "expected"),
    [
        # case and surrounding whitespace do not matter
        pytest.param("  Made In ITALY ", "", "", "made in italy", id="case-space"),
        # inner runs of whitespace collapse
        pytest.param("hot\n  surface", "", "", "hot surface", id="inner-space"),
        # full-width letters fold to ASCII (NFKC)
        pytest.param("ＣＥ", "", "", "ce", id="nfkc-letters"),
        # a no-break space is a space
        pytest.param("Made\u00a0in\u202fChina", "", "", "made in china", id="nbsp"),
        # invisible format characters (zero-width space, soft hyphen) are removed
        pytest.param("Ket\u200btle\u00ad", "", "", "kettle", id="format-chars"),
        # units: glued, upper case, mixed case and spelled out all become "500 ml"
        pytest.param("500ml", "attributes", "size", "500 ml", id="unit-glued"),
        pytest.param("500 ML", "attributes", "size", "500 ml", id="unit-upper"),
        pytest.param("500 mL", "attributes", "size", "500 ml", id="unit-mixed"),
        pytest.param("500 millilitres", "attributes", "size", "500 ml", id="unit-spelled"),
        # full-width digits and a no-break space before the unit
        pytest.param("５００\u00a0ml", "attributes", "size", "500 ml", id="unit-fullwidth"),
        # a decimal comma becomes a point
        pytest.param("0,5 l", "attributes", "size", "0.5 l", id="decimal-comma"),
        # "1,000" may be a thousands separator: left as written
        pytest.param("1,000 mAh", "attributes", "size", "1,000 mah", id="thousands-kept"),
        # units are never converted into each other
        pytest.param("0.5 Litres", "attributes", "size", "0.5 l", id="no-conversion"),
        # a unit inside a sentence is rewritten too; a word that only starts like one is not
        pytest.param("Heats 1.7L in 5 min", "", "", "heats 1.7 l in 5 min", id="unit-in-text"),
        # "℃" is NFKC "°C"
        pytest.param("max 40 ℃", "", "", "max 40 °c", id="celsius"),
        # barcodes compare by digits only
        pytest.param("4 006381-333931", "identifiers", "gtin", "4006381333931", id="gtin-digits"),
        # full-width barcode digits fold first
        pytest.param("４００６３８１", "identifiers", "gtin", "4006381", id="gtin-fullwidth"),
        # a "barcode" without digits is nothing
        pytest.param("n/a", "identifiers", "gtin", "", id="gtin-no-digits"),
        # other identifiers keep their punctuation
        pytest.param("KT-2041", "identifiers", "model_number", "kt-2041", id="model-keeps-dash"),
        # a model number is a code: "500ML" in it is not a quantity
        pytest.param("KT-500ML", "identifiers", "model_number", "kt-500ml", id="model-no-units"),
        # a JSON number loses its ".0"
        pytest.param(500.0, "", "", "500", id="json-number"),
        # a JSON boolean
        pytest.param(True, "", "", "true", id="json-bool"),
    ],
)
def test_normalise(value, group, name, expected):
    assert normalise(value, group, name) == expected


def test_units_are_not_converted():
    # 0.5 l and 500 ml are the same volume, but a label prints one of them
    assert normalise("0,5 l", "attributes", "size") != normalise("500 ml", "attributes", "size")


def test_digits_only_fields_come_from_the_schema():
    schema = AttributeSchema.model_validate(
        {"name": "s", "groups": {"ids": {"ean": {"compare": "digits"}, "sku": {}}}}
    )
    assert normalise("40-06 381", "ids", "ean", schema) == "4006381"
    assert normalise("40-06 381", "ids", "sku", schema) == "40-06 381"


REFERENCE = {
    "identifiers": {"gtin": "4006381333931", "model_number": "KT-2041"},
    "regulatory_safety": {"certification_marks": ["CE", "UKCA"]},
}


@pytest.mark.parametrize(
    ("predicted", "reference", "tp", "n_pred", "n_ref"),
    [
        # exact answer: everything right
        pytest.param(REFERENCE, REFERENCE, 4, 4, 4, id="exact"),
        # list order and case do not matter (sets)
        pytest.param(
            {**REFERENCE, "regulatory_safety": {"certification_marks": ["ukca", "ce"]}},
            REFERENCE, 4, 4, 4, id="list-order",
        ),
        # duplicates in a list count once
        pytest.param(
            {**REFERENCE, "regulatory_safety": {"certification_marks": ["CE", "ce ", "UKCA"]}},
            REFERENCE, 4, 4, 4, id="list-duplicates",
        ),
        # partial overlap of a list: one right, one invented, one missed
        pytest.param(
            {**REFERENCE, "regulatory_safety": {"certification_marks": ["CE", "FCC"]}},
            REFERENCE, 3, 4, 4, id="list-partial",
        ),
        # a missing field costs recall only
        pytest.param({"identifiers": {"gtin": "4006381333931"}}, REFERENCE, 1, 1, 4, id="missing"),
        # an extra (invented) field costs precision only
        pytest.param(
            {**REFERENCE, "origin_production": {"country_of_origin": "China"}},
            REFERENCE, 4, 5, 4, id="extra-field",
        ),
        # a wrong value costs both
        pytest.param(
            {**REFERENCE, "identifiers": {"gtin": "4006381333930", "model_number": "KT-2041"}},
            REFERENCE, 3, 4, 4, id="wrong-value",
        ),
        # the barcode with spaces and dashes is the same barcode
        pytest.param(
            {**REFERENCE, "identifiers": {"gtin": "4 006381-333931", "model_number": "kt-2041"}},
            REFERENCE, 4, 4, 4, id="barcode-digits-only",
        ),
        # a barcode in full-width digits is the same barcode
        pytest.param(
            {**REFERENCE, "identifiers": {"gtin": "４００６３８１３３３９３１", "model_number": "KT-2041"}},
            REFERENCE, 4, 4, 4, id="barcode-fullwidth",
        ),
        # unit spellings of one size match
        pytest.param(
            {"attributes": {"size": "500 millilitres"}},
            {"attributes": {"size": "500mL"}}, 1, 1, 1, id="unit-variants",
        ),
        # the same volume in another unit does not
        pytest.param(
            {"attributes": {"size": "0,5 l"}}, {"attributes": {"size": "500 ml"}},
            0, 1, 1, id="unit-not-converted",
        ),
        # a no-break space inside a value matches a plain space
        pytest.param(
            {"origin_production": {"country_of_origin": "Made\u00a0in China"}},
            {"origin_production": {"country_of_origin": "made in china"}}, 1, 1, 1, id="nbsp",
        ),
        # a nested object is flattened into sub-fields, each a unit
        pytest.param(
            {"attributes": {"size": {"value": "500", "unit": "ml"}}},
            {"attributes": {"size": {"value": "500", "unit": "l"}}}, 1, 2, 2, id="nested",
        ),
        # null, empty string, whitespace and empty list are not given
        pytest.param(
            {**REFERENCE, "origin_production": {"country_of_origin": None, "importer": " "},
             "attributes": {"color": "", "material": []}},
            REFERENCE, 4, 4, 4, id="null-empty",
        ),
        # an unparseable answer predicts nothing: every reference unit is missed
        pytest.param(None, REFERENCE, 0, 0, 4, id="invalid-json"),
        # a group that is not an object is ignored, not crashed on
        pytest.param({"identifiers": "4006381333931"}, REFERENCE, 0, 0, 4, id="group-not-object"),
        # an empty reference: everything predicted is extra
        pytest.param(REFERENCE, {}, 0, 4, 0, id="empty-reference"),
    ],
)  # fmt: skip
def test_score_example_counts(predicted, reference, tp, n_pred, n_ref):
    counts = score_example(predicted, reference)
    assert sum(c.tp for c in counts.values()) == tp
    assert sum(c.predicted for c in counts.values()) == n_pred
    assert sum(c.reference for c in counts.values()) == n_ref


def test_nested_fields_are_named_by_path():
    counts = score_example({"attributes": {"size": {"value": "500", "unit": "ml"}}}, {})
    assert set(counts) == {"attributes.size.value", "attributes.size.unit"}


@pytest.mark.parametrize(
    ("attributes", "flat"),
    [
        # scalars stay scalars, lists stay lists
        pytest.param(REFERENCE, {
            "identifiers.gtin": "4006381333931", "identifiers.model_number": "KT-2041",
            "regulatory_safety.certification_marks": ["CE", "UKCA"],
        }, id="plain"),
        # a list of objects becomes one list per sub-field
        pytest.param(
            {"regulatory_safety": {"marks": [{"name": "CE"}, {"name": "FCC", "id": None}]}},
            {"regulatory_safety.marks.name": ["CE", "FCC"]}, id="list-of-objects",
        ),
        # a one-element list is still a list
        pytest.param({"g": {"f": ["x"]}}, {"g.f": ["x"]}, id="one-element-list"),
        # not an object
        pytest.param(["a"], {}, id="not-an-object"),
    ],
)  # fmt: skip
def test_flatten_fields(attributes, flat):
    assert flatten_fields(attributes) == flat


def test_score_answers_micro_groups_and_validity():
    scores = score_answers(
        [
            REFERENCE,
            {"identifiers": {"gtin": "4006381333931"}, "attributes": {"brand": "Acme"}},
            None,
        ],
        [REFERENCE, REFERENCE, REFERENCE],
        [True, True, False],
    )
    result = scores.as_dict()
    assert (result["examples"], result["json_valid"]) == (3, 2)
    assert result["json_valid_rate"] == pytest.approx(2 / 3, abs=1e-4)
    micro = result["micro"]
    assert (micro["tp"], micro["predicted"], micro["reference"]) == (5, 6, 12)
    assert micro["precision"] == pytest.approx(5 / 6, abs=1e-4)
    assert micro["recall"] == pytest.approx(5 / 12, abs=1e-4)
    assert micro["f1"] == pytest.approx(2 * 5 / (6 + 12), abs=1e-4)
    groups = result["groups"]
    # every schema group has a row, in schema order; an empty one scores nothing
    assert list(groups) == ["identifiers", "attributes", "origin_production", "regulatory_safety"]
    assert groups["identifiers"] == {
        "precision": 1.0, "recall": 0.5, "f1": 0.6667, "tp": 3, "predicted": 3, "reference": 6,
    }  # fmt: skip
    assert groups["attributes"] == {
        "precision": 0.0, "recall": 1.0, "f1": 0.0, "tp": 0, "predicted": 1, "reference": 0,
    }  # fmt: skip
    assert groups["origin_production"] == {
        "precision": None, "recall": None, "f1": None, "tp": 0, "predicted": 0, "reference": 0,
    }  # fmt: skip
    assert groups["regulatory_safety"] == {
        "precision": 1.0, "recall": 0.3333, "f1": 0.5, "tp": 2, "predicted": 2, "reference": 6,
    }  # fmt: skip
    fields = result["fields"]
    assert (fields["identifiers.gtin"]["tp"], fields["identifiers.gtin"]["reference"]) == (2, 3)
    assert fields["origin_production.importer"]["f1"] is None  # schema field, never given


def test_score_answers_validity_defaults_to_parsed():
    scores = score_answers([REFERENCE, None], [REFERENCE, REFERENCE])
    assert scores.as_dict()["json_valid_rate"] == 0.5


def test_unknown_groups_get_rows_after_the_schema_groups():
    scores = score_answers([{"extras": {"note": "x"}}], [{}]).as_dict()
    assert list(scores["groups"])[-1] == "extras"
    assert scores["groups"]["extras"]["predicted"] == 1


def test_field_units_list_elements_are_separate_units():
    units = field_units({"regulatory_safety": {"certification_marks": ["CE", "CE ", "FCC"]}})
    assert units == {
        ("regulatory_safety", "certification_marks", "ce"),
        ("regulatory_safety", "certification_marks", "fcc"),
    }


@pytest.mark.parametrize(
    ("predicted", "reference", "errors"),
    [
        # equal after normalisation: no error
        pytest.param(
            {"attributes": {"size": "500ML"}}, {"attributes": {"size": "500 ml"}}, [], id="equal"
        ),
        # only the reference gives it: missed
        pytest.param({}, {"attributes": {"brand": "Acme"}}, [
            {"field": "attributes.brand", "kind": "missed", "predicted": None, "reference": "Acme"},
        ], id="missed"),
        # only the answer gives it: extra
        pytest.param({"attributes": {"brand": "Acme"}}, {}, [
            {"field": "attributes.brand", "kind": "extra", "predicted": "Acme", "reference": None},
        ], id="extra"),
        # both give it, values differ: wrong, values as written
        pytest.param(
            {"identifiers": {"gtin": "4006381333930"}}, {"identifiers": {"gtin": "4006381333931"}},
            [{"field": "identifiers.gtin", "kind": "wrong", "predicted": "4006381333930",
              "reference": "4006381333931"}],
            id="wrong",
        ),
        # a list that overlaps partly is wrong, with both lists
        pytest.param(
            {"regulatory_safety": {"certification_marks": ["CE", "FCC"]}},
            {"regulatory_safety": {"certification_marks": ["UKCA", "ce"]}},
            [{"field": "regulatory_safety.certification_marks", "kind": "wrong",
              "predicted": ["CE", "FCC"], "reference": ["UKCA", "ce"]}],
            id="list-partial",
        ),
        # a barcode with no digits is not given: missed, but what was written is shown
        pytest.param(
            {"identifiers": {"gtin": "n/a"}}, {"identifiers": {"gtin": "123"}},
            [{"field": "identifiers.gtin", "kind": "missed", "predicted": "n/a",
              "reference": "123"}],
            id="not-given-shown",
        ),
        # an unparseable answer misses every reference field
        pytest.param(None, REFERENCE, [
            {"field": "identifiers.gtin", "kind": "missed", "predicted": None,
             "reference": "4006381333931"},
            {"field": "identifiers.model_number", "kind": "missed", "predicted": None,
             "reference": "KT-2041"},
            {"field": "regulatory_safety.certification_marks", "kind": "missed",
             "predicted": None, "reference": ["CE", "UKCA"]},
        ], id="invalid-json"),
        # nested sub-fields are reported by path
        pytest.param(
            {"attributes": {"size": {"value": "500", "unit": "ml"}}},
            {"attributes": {"size": {"value": "500", "unit": "l"}}},
            [{"field": "attributes.size.unit", "kind": "wrong", "predicted": "ml",
              "reference": "l"}],
            id="nested",
        ),
    ],
)  # fmt: skip
def test_field_errors(predicted, reference, errors):
    assert field_errors(predicted, reference) == errors


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
    # finetune.evaluate.parse's parser feeds score_answers; imported here so a change there
    # fails this one test only.
    from finetune.evaluate.parse import parse_answer

    assert parse_answer(text) == (value, strict)
