"""One OpenAI-compatible client layer under teachers, evaluate endpoints and the judge, and one
way of asking for boxes (labeling and predict's teacher box source)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from teacher_labeling import client as client_layer
from teacher_labeling.box_questions import box_request
from teacher_labeling.box_source import TeacherBoxes
from teacher_labeling.client import EndpointSettings
from teacher_labeling.endpoint import EndpointBackend, EndpointConfig, load_endpoint_config
from teacher_labeling.judge import (
    JudgeConfig,
    JudgeEndpointConfig,
    JudgeItem,
    judge_items_sync,
    load_judge_config,
)
from teacher_labeling.labeling import label_items
from teacher_labeling.prompts import boxes_prompt
from teacher_labeling.teachers import OpenAITeacher, TeacherConfig
from tests.fake_openai import FakeOpenAI, FixedAnswer, RedSquareBoxes
from tests.test_openai_teacher import PHOTOS, _write_catalog
from toolkit.catalog import ingest_catalog, load_catalog, load_ingested_image
from toolkit.errors import CroptuneError
from toolkit.protocols import ItemPhotos
from toolkit.schema import load_schema
from toolkit.store import ItemRow, RunStore

KEY_ENV = "CROPTUNE_TEST_KEY"
KEY = "sk-test-SECRET-0123456789"
ROOT = Path(__file__).resolve().parents[1]

# What each config changes of the shared endpoint keys, on purpose (everything else is equal).
OWN_DEFAULTS = {
    TeacherConfig: {"name": "required", "model": "reference"},
    EndpointConfig: {"name": "", "model": "required", "image_format": "png"},
    JudgeEndpointConfig: {"name": "judge", "model": "required"},
}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _default(cls, key):
    info = cls.model_fields[key]
    return "required" if info.is_required() else info.get_default(call_default_factory=True)


@pytest.mark.parametrize("cls", list(OWN_DEFAULTS), ids=lambda c: c.__name__)
def test_every_endpoint_config_takes_the_same_endpoint_keys_with_the_same_defaults(cls):
    # Caught: EndpointConfig and the judge's endpoint were TeacherConfigs with stub keys.
    assert issubclass(cls, EndpointSettings)
    for key in EndpointSettings.model_fields:
        expected = OWN_DEFAULTS[cls].get(key, _default(EndpointSettings, key))
        assert _default(cls, key) == expected, (cls.__name__, key)
    # a key pasted where the variable name belongs is refused by every one, in the same words
    with pytest.raises(ValueError, match="must be the NAME of an environment variable"):
        extra = {"role": "boxes"} if cls is TeacherConfig else {}
        cls.model_validate({"name": "n", "model": "m", "api_key_env": "sk-1.2", **extra})


def test_endpoint_configs_have_no_teacher_stubs():
    teaching = {"role", "kind", "coords", "min_pixels", "max_pixels"}
    assert not teaching & set(EndpointConfig.model_fields)
    assert not teaching & set(JudgeEndpointConfig.model_fields)
    assert "structured_output" not in EndpointConfig.model_fields  # scored as written
    with pytest.raises(ValueError, match="role"):
        EndpointConfig.model_validate({"model": "m", "role": "attributes"})


def test_shipped_and_documented_endpoint_yamls_load(tmp_path):
    endpoint = load_endpoint_config(ROOT / "toolkit/configs/endpoint-vllm.yaml")
    assert (endpoint.name, endpoint.model, endpoint.image_format) == (
        "student-vllm", "croptune", "png"
    )  # fmt: skip
    # docs/evaluation.md's judge.yaml
    judge = tmp_path / "judge.yaml"
    judge.write_text(
        yaml.safe_dump(
            {"endpoint": {"model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY",
                          "max_concurrency": 8, "requests_per_minute": 300}}
        )
    )  # fmt: skip
    config = load_judge_config(judge)
    assert (config.endpoint.name, config.endpoint.structured_output) == ("judge", True)


def _limits(engine):
    return (
        engine.name, engine.model, engine.max_retries, engine._slots._value,
        engine._requests.max_rate, engine._tokens.max_rate,
    )  # fmt: skip


def test_teacher_endpoint_and_judge_build_the_same_engine(monkeypatch):
    # Caught: the engine was built twice (teachers, endpoint) and the judge went through a teacher.
    keys = {"name": "x", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV,
            "max_concurrency": 3, "requests_per_minute": 120, "tokens_per_minute": 6000,
            "max_retries": 1}  # fmt: skip
    teacher = TeacherConfig(role="attributes", **keys)
    endpoint = EndpointConfig(**keys)
    judge = JudgeConfig(endpoint=keys)
    built = []
    real = client_layer.build_engine

    def spy(config, client=None, wrap=None):
        built.append(real(config, client, wrap))
        return built[-1]

    monkeypatch.setattr("teacher_labeling.judge.build_engine", spy)
    monkeypatch.setattr("teacher_labeling.judge.check_ready", lambda what, config: None)

    async def engines():
        from_teacher = OpenAITeacher(teacher, load_schema()).engine
        from_endpoint = EndpointBackend(endpoint)._engine()
        return from_teacher, from_endpoint

    from_teacher, from_endpoint = asyncio.run(engines())
    judge_items_sync(judge, [JudgeItem("A", [], None)])  # nothing predicted: no request
    assert _limits(from_teacher) == _limits(from_endpoint) == _limits(built[0])


def test_the_judge_runs_without_a_schema_or_the_teacher_stack(monkeypatch):
    # Caught: the judge built an OpenAITeacher with an attribute schema it never used.
    def no_schema(*args, **kwargs):
        raise AssertionError("the judge asked for an attribute schema")

    monkeypatch.setattr("toolkit.schema.load_schema", no_schema)
    verdict = {"attributes.brand": "verifiable_correct"}
    with FakeOpenAI(FixedAnswer(json.dumps(verdict)), api_key=KEY) as server:
        config = JudgeConfig(
            endpoint={"base_url": server.base_url, "model": "judge-m", "api_key_env": KEY_ENV}
        )
        image = Image.new("RGB", (40, 30), (200, 10, 10))
        [result] = judge_items_sync(
            config, [JudgeItem("A", [image], {"attributes": {"brand": "X"}})]
        )
        [chat] = [r.body_json for r in server.requests if r.path.endswith("/chat/completions")]
    assert result.error is None and result.buckets == verdict
    content = chat["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "text"]
    assert chat["response_format"]["json_schema"]["name"] == "judgement"
    code = "import sys, teacher_labeling.judge; print('teacher_labeling.teachers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_judge_kind_other_than_openai_is_refused_in_its_own_words():
    with pytest.raises(ValueError, match="the judge needs an OpenAI-compatible endpoint"):
        JudgeConfig.model_validate({"endpoint": {"model": "m", "kind": "local"}})


def _old_box_key(config: TeacherConfig, image_hash: str) -> str:
    """A box request's cache key as labeling.py and box_source.py each computed it by hand."""
    parameters = {"task": "boxes", "coords": config.coords, "temperature": config.temperature,
                  "max_tokens": config.max_tokens, "endpoint": config.base_url}  # fmt: skip
    if config.image_format != "jpeg":
        parameters["image_format"] = config.image_format
    if config.coords == "qwen2.5-vl":
        parameters["pixels"] = [config.min_pixels, config.max_pixels]
    blob = json.dumps(
        [config.model, boxes_prompt(config.coords), [image_hash], parameters], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize(
    "config",
    [
        {"coords": "qwen2.5-vl", "max_pixels": 400_000},
        {"coords": "pixels"},
        {"coords": "norm1000", "image_format": "png", "temperature": 0.3},
    ],
    ids=lambda c: c["coords"],
)
def test_box_cache_keys_stay_what_stores_hold(config):
    # Stores written before box requests set their own key keep answering.
    teacher_config = TeacherConfig(
        name="q", role="boxes", model="Qwen/Qwen2.5-VL-32B-Instruct",
        base_url="http://127.0.0.1:8000/v1", **config,
    )  # fmt: skip
    teacher = OpenAITeacher(teacher_config, load_schema())  # no request is sent
    item = ItemRow("I0", None, None, None, None, [])
    request = box_request(teacher, item, 0, "abc123", (641, 479))
    assert request.cache_key == _old_box_key(teacher_config, "abc123")
    assert request.original_size == (641, 479) and request.sent_size is not None


def test_labeling_and_the_teacher_box_source_share_one_question(tmp_path):
    # Caught: the two callers each patched the cache key by hand; one forgetting a parameter
    # would ask every photo again at predict time.
    catalog = _write_catalog(tmp_path, PHOTOS[:3])
    with FakeOpenAI(RedSquareBoxes("qwen2.5-vl"), api_key=KEY) as server:
        config = TeacherConfig(
            name="qwen", role="boxes", base_url=server.base_url, model="m",
            api_key_env=KEY_ENV, coords="qwen2.5-vl", max_pixels=400_000, timeout_s=5,
        )  # fmt: skip
        store = RunStore(tmp_path / "run")
        ingest_catalog(load_catalog(catalog), store)
        summary = label_items(store, [OpenAITeacher(config, load_schema())])
        asked = len([r for r in server.requests if r.path.endswith("/chat/completions")])
        source = TeacherBoxes(config)
        source.prepare()
        try:
            for item in store.items():
                rows = [r for r in store.images(item.item_id) if r.usable]
                images = {r.index: load_ingested_image(r) for r in rows}
                hashes = {r.index: r.sha256 or "" for r in rows}
                predicted = source.boxes(ItemPhotos(item, images, hashes, store))
                labeled = [b for _, b in store.boxes(item.item_id)]
                assert [b.xyxy for b in predicted] == [b.xyxy for b in labeled]
        finally:
            source.close()
        after = len([r for r in server.requests if r.path.endswith("/chat/completions")])
    assert summary.asked == asked == 3
    assert source.asked == 0 and after == asked  # every photo was asked once, by labeling


def test_a_missing_key_stops_every_endpoint_user_in_the_same_words(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    keys = {"model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV}
    checks = [
        OpenAITeacher(TeacherConfig(name="t", role="boxes", **keys), load_schema()).check_ready,
        EndpointBackend(EndpointConfig(name="t", **keys)).check_ready,
        lambda: judge_items_sync(JudgeConfig(endpoint={"name": "t", **keys}), []),
    ]
    for check in checks:
        with pytest.raises(CroptuneError, match=f"teacher 't': the environment variable {KEY_ENV}"):
            check()
