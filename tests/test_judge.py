"""The LLM judge: prompt, parser, config, and real requests to a loopback OpenAI server."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from teacher_labeling.judge import (
    BUCKETS,
    JudgeConfig,
    JudgeItem,
    JudgeResult,
    bucket_rates,
    judge_claims,
    judge_items_sync,
    judge_prompt,
    load_judge_config,
    parse_judgement,
)
from teacher_labeling.parse import AnswerParseError
from tests.fake_openai import ChatRequest, FailThen, FakeOpenAI, FixedAnswer, Reply, mean_rgb
from toolkit.errors import CroptuneError

KEY = "sk-test-SECRET-0123456789"
KEY_ENV = "CROPTUNE_TEST_JUDGE_KEY"

PREDICTED = {
    "identifiers": {"gtin": "4006381333931"},
    "attributes": {"brand": "Acme", "size": {"value": "500", "unit": "ml"}},
    "regulatory_safety": {"certification_marks": ["CE", "FCC"]},
}
CLAIMS = {
    "identifiers.gtin": "4006381333931",
    "attributes.brand": "Acme",
    "attributes.size.value": "500",
    "attributes.size.unit": "ml",
    "regulatory_safety.certification_marks[0]": "CE",
    "regulatory_safety.certification_marks[1]": "FCC",
}
VERDICT = {
    "identifiers.gtin": "verifiable_correct",
    "attributes.brand": "verifiable_correct",
    "attributes.size.value": "verifiable_incorrect",
    "attributes.size.unit": "verifiable_correct",
    "regulatory_safety.certification_marks[0]": "verifiable_correct",
    "regulatory_safety.certification_marks[1]": "unverifiable",
}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _config(server, **endpoint) -> JudgeConfig:
    endpoint.setdefault("max_retries", 2)
    endpoint.setdefault("timeout_s", 5)
    return JudgeConfig.model_validate(
        {"endpoint": {"base_url": server.base_url, "model": "judge-m", "api_key_env": KEY_ENV,
                      **endpoint}}
    )  # fmt: skip


def _images(*colors):
    return [Image.new("RGB", (64, 48), color) for color in colors]


def _chat_requests(server):
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def test_claims_flatten_nested_and_list_fields():
    assert judge_claims(PREDICTED) == CLAIMS


@pytest.mark.parametrize(
    "predicted",
    [
        # an unparseable answer has nothing to judge
        pytest.param(None, id="none"),
        # null and empty values are not claims
        pytest.param({"attributes": {"brand": None, "color": " ", "material": []}}, id="empty"),
    ],
)
def test_no_claims(predicted):
    assert judge_claims(predicted) == {}


def test_prompt_names_every_claim_and_bucket():
    prompt = judge_prompt(CLAIMS, 3)
    assert "3 photos" in prompt
    assert json.loads(prompt[prompt.index("{") :]) == CLAIMS
    assert all(f'"{bucket}"' in prompt for bucket in BUCKETS)
    assert judge_prompt(CLAIMS, 3) == prompt  # pure


@pytest.mark.parametrize(
    ("text", "expected", "warning"),
    [
        # a clean answer
        pytest.param(json.dumps(VERDICT), VERDICT, None, id="clean"),
        # fenced, with prose around it
        pytest.param(
            "Here you go:\n```json\n" + json.dumps(VERDICT) + "\n```\nDone.", VERDICT, None,
            id="fenced",
        ),
        # truncated in the middle of the last value: the complete entries are kept
        pytest.param(
            '{"identifiers.gtin": "verifiable_correct", "attributes.brand": "verifiable_inc',
            {"identifiers.gtin": "verifiable_correct"}, "unknown buckets", id="truncated",
        ),
        # spaced, capitalised or hyphenated bucket names are read
        pytest.param(
            '{"identifiers.gtin": "Verifiable Correct", "attributes.brand": "verifiable-incorrect"}',
            {"identifiers.gtin": "verifiable_correct", "attributes.brand": "verifiable_incorrect"},
            None, id="spelling",
        ),
        # an unknown bucket is ignored with a warning
        pytest.param(
            '{"identifiers.gtin": "probably", "attributes.brand": "unverifiable"}',
            {"attributes.brand": "unverifiable"}, "unknown buckets", id="unknown-bucket",
        ),
        # a key that was not asked about is ignored with a warning
        pytest.param(
            '{"identifiers.gtin": "unverifiable", "attributes.colour": "unverifiable"}',
            {"identifiers.gtin": "unverifiable"}, "not asked about", id="unknown-field",
        ),
        # an answer nested by group is read as dotted keys
        pytest.param(
            '{"identifiers": {"gtin": "verifiable_correct"}}',
            {"identifiers.gtin": "verifiable_correct"}, None, id="nested",
        ),
        # a verdict object with a reason beside the bucket
        pytest.param(
            '{"identifiers.gtin": {"bucket": "unverifiable", "reason": "no barcode shown"}}',
            {"identifiers.gtin": "unverifiable"}, None, id="verdict-object",
        ),
    ],
)  # fmt: skip
def test_parse_judgement(caplog, text, expected, warning):
    with caplog.at_level(logging.WARNING, logger="teacher_labeling.judge"):
        assert parse_judgement(text, CLAIMS) == expected
    if warning:
        assert warning in caplog.text
    else:
        assert not caplog.records


@pytest.mark.parametrize(
    "text",
    [
        # prose without JSON
        pytest.param("I cannot see the photos.", id="prose"),
        # a list is not a verdict object
        pytest.param('["verifiable_correct"]', id="list"),
    ],
)
def test_parse_judgement_rejects_non_objects(text):
    with pytest.raises(AnswerParseError):
        parse_judgement(text, CLAIMS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # a key pasted where the variable name belongs is refused (TeacherConfig's rule)
        pytest.param({"endpoint": {"model": "m", "api_key_env": "sk-abc.def"}}, "NAME", id="key"),
        # the judge needs an OpenAI-compatible endpoint
        pytest.param({"endpoint": {"model": "m", "kind": "local"}}, "OpenAI-compatible", id="kind"),
        # unknown keys are errors, not silently ignored
        pytest.param({"endpoint": {"model": "m"}, "temperture": 0}, "temperture", id="extra"),
    ],
)
def test_judge_config_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        JudgeConfig.model_validate(data)


def test_load_judge_config(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text(
        "endpoint:\n  model: gpt-4.1\n  api_key_env: OPENAI_API_KEY\n  max_concurrency: 4\n"
    )
    config = load_judge_config(path)
    assert (config.endpoint.name, config.endpoint.model) == ("judge", "gpt-4.1")
    assert config.endpoint.max_concurrency == 4
    with pytest.raises(CroptuneError, match="does not exist"):
        load_judge_config(tmp_path / "missing.yaml")


def test_scripted_answer_gives_buckets_and_images_arrive(caplog):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    items = [
        JudgeItem("A", _images(*colors), PREDICTED),
        JudgeItem("B", _images(colors[0]), PREDICTED),
        # nothing predicted: judged without a request
        JudgeItem("C", _images(colors[1]), None),
    ]
    seen = []
    with (
        FakeOpenAI(FixedAnswer(json.dumps(VERDICT)), api_key=KEY) as server,
        caplog.at_level(logging.DEBUG),
    ):
        results = judge_items_sync(_config(server), items, on_result=seen.append)
        requests = _chat_requests(server)
    assert [r.item_id for r in results] == ["A", "B", "C"]
    assert sorted(r.item_id for r in seen) == ["A", "B", "C"]
    assert results[0].buckets == VERDICT and results[0].error is None
    assert results[2] == JudgeResult(item_id="C", claims={})
    assert len(requests) == 2
    # the images arrive as image parts, in order, before the instruction
    by_count = {}
    for request in requests:
        content = request.body_json["messages"][0]["content"]
        kinds = [part["type"] for part in content]
        assert kinds == ["image_url"] * (len(kinds) - 1) + ["text"]
        by_count[len(kinds) - 1] = content
        assert json.loads(content[-1]["text"][content[-1]["text"].index("{") :]) == CLAIMS
        schema = request.body_json["response_format"]["json_schema"]["schema"]
        assert set(schema["required"]) == set(CLAIMS)
    assert sorted(by_count) == [1, 3]
    received = ChatRequest(requests[0].body_json).images + ChatRequest(requests[1].body_json).images
    got = np.array(sorted(mean_rgb(image) for image in received))
    assert np.abs(got - np.array(sorted([*colors, colors[0]]))).max() <= 3  # JPEG noise
    rates = bucket_rates(results)
    assert rates == {
        "verifiable_correct": round(8 / 12, 4),
        "verifiable_incorrect": round(2 / 12, 4),
        "unverifiable": round(2 / 12, 4),
        "judged_fields": 12,
        "unanswered_fields": 0,
        "failed_items": 0,
    }
    assert KEY not in caplog.text
    assert all(KEY not in str(record.args) for record in caplog.records)


def test_fenced_truncated_answer_over_http():
    answer = "```json\n" + json.dumps(VERDICT)[:-30]  # cut inside the last entries, no fence end
    with FakeOpenAI(FixedAnswer(answer)) as server:
        [result] = judge_items_sync(
            _config(server), [JudgeItem("A", _images((0, 0, 0)), PREDICTED)]
        )
    assert result.error is None
    assert result.buckets == {k: v for k, v in VERDICT.items() if k in list(VERDICT)[:5]}
    assert result.unanswered == ["regulatory_safety.certification_marks[1]"]
    assert bucket_rates([result])["unanswered_fields"] == 1


def test_server_error_is_retried():
    responder = FailThen(1, Reply.fail(500, retry_after_s=0), FixedAnswer(json.dumps(VERDICT)))
    with FakeOpenAI(responder) as server:
        [result] = judge_items_sync(
            _config(server), [JudgeItem("A", _images((9, 9, 9)), PREDICTED)]
        )
        attempts = _chat_requests(server)
    assert result.error is None and result.buckets == VERDICT
    assert result.usage["attempts"] == 2 and len(attempts) == 2


def test_failed_item_does_not_stop_the_others():
    def responder(request):
        if "BAD" in request.texts[-1]:
            return Reply.fail(503, "overloaded", retry_after_s=0)
        return json.dumps({"attributes.brand": "verifiable_correct"})

    items = [
        JudgeItem("ok1", _images((1, 1, 1)), {"attributes": {"brand": "Acme"}}),
        JudgeItem("bad", _images((2, 2, 2)), {"attributes": {"brand": "BAD"}}),
        JudgeItem("ok2", _images((3, 3, 3)), {"attributes": {"brand": "Acme"}}),
    ]
    with FakeOpenAI(responder) as server:
        results = judge_items_sync(_config(server, max_retries=1), items)
    assert [r.error is None for r in results] == [True, False, True]
    assert "HTTP 503" in results[1].error
    rates = bucket_rates(results)
    assert (rates["failed_items"], rates["judged_fields"], rates["verifiable_correct"]) == (
        1,
        2,
        1.0,
    )


def test_unusable_answer_is_an_item_error():
    with FakeOpenAI(FixedAnswer("I cannot tell.")) as server:
        [result] = judge_items_sync(
            _config(server), [JudgeItem("A", _images((0, 0, 0)), PREDICTED)]
        )
    assert result.error.startswith("unusable judge answer") and result.buckets == {}
    assert bucket_rates([result])["failed_items"] == 1


def test_bad_key_stops_with_one_message(caplog):
    items = [JudgeItem(f"I{n}", _images((n, n, n)), PREDICTED) for n in range(4)]
    with (
        FakeOpenAI(FixedAnswer("{}"), api_key="another key") as server,
        caplog.at_level(logging.DEBUG),
    ):
        with pytest.raises(CroptuneError) as caught:
            judge_items_sync(_config(server, max_concurrency=1), items)
        attempts = _chat_requests(server)
    message = str(caught.value)
    assert "HTTP 401" in message and "judge-m" in message and KEY_ENV in message
    assert KEY not in message and KEY not in caplog.text
    assert attempts == []  # the endpoint check (GET /models) stops it before any item


def test_missing_key_variable_fails_before_any_request(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with FakeOpenAI(FixedAnswer("{}")) as server:
        with pytest.raises(CroptuneError, match=KEY_ENV):
            judge_items_sync(_config(server), [JudgeItem("A", _images((0, 0, 0)), PREDICTED)])
        assert _chat_requests(server) == []


def test_bucket_rates_of_nothing():
    assert bucket_rates([]) == {
        "verifiable_correct": None,
        "verifiable_incorrect": None,
        "unverifiable": None,
        "judged_fields": 0,
        "unanswered_fields": 0,
        "failed_items": 0,
    }


def test_rgba_images_are_sent_as_rgb():
    image = Image.fromarray(np.full((20, 30, 4), (10, 200, 10, 128), dtype=np.uint8), mode="RGBA")
    with FakeOpenAI(FixedAnswer(json.dumps(VERDICT))) as server:
        [result] = judge_items_sync(_config(server), [JudgeItem("A", [image], PREDICTED)])
    assert result.error is None
