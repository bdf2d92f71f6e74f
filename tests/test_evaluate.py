"""croptune evaluate: in-process and endpoint backends, scores, cache, retries, comparison table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from croptune.models import open_model
from croptune.pipeline import run_evaluate
from finetune.evaluate.result import latency_stats
from tests.fake_openai import ChatRequest, FailThen, FakeOpenAI, Reply, mean_rgb
from toolkit.errors import CroptuneError

CROPTUNE = str(Path(sys.executable).parent / "croptune")
PROMPT = "Read the printed text on the photos. Answer with one JSON object."
KEY_ENV = "CROPTUNE_TEST_EVAL_KEY"
SECRET = "sk-test-eval-0123456789abcdef"

# The test split: each item's photos are solid colours (its first colour identifies it to
# the scripted server), its reference, and what the scripted endpoint answers with what
# that answer deserves: (answer text, what it parses to, whether it is valid JSON).
TEST_ITEMS = {
    "T0": {
        "colours": [(200, 30, 30), (30, 30, 200)],
        "reference": {
            "attributes": {"brand": "Acme", "color": "red"},
            "identifiers": {"model_number": "KT-1"},
        },
        # exact: 3 of 3
        "answer": '{"attributes": {"brand": "Acme", "color": "red"}, '
        '"identifiers": {"model_number": "KT-1"}}',
        "deserves": (
            {
                "attributes": {"brand": "Acme", "color": "red"},
                "identifiers": {"model_number": "KT-1"},
            },
            True,
        ),
    },
    "T1": {
        "colours": [(30, 200, 30), (240, 240, 240), (10, 10, 10)],
        "reference": {"attributes": {"brand": "Bolt", "color": "blue", "material": "steel"}},
        # fenced; brand right up to case, colour wrong, material missed
        "answer": '```json\n{"attributes": {"brand": "BOLT", "color": "green"}}\n```',
        "deserves": ({"attributes": {"brand": "BOLT", "color": "green"}}, True),
    },
    "T2": {
        "colours": [(200, 200, 30), (120, 60, 200)],
        "reference": {
            "attributes": {"brand": "Cora"},
            "regulatory_safety": {"certification_marks": ["CE", "UKCA"]},
        },
        # cut off mid-list: repaired to what is there, but counted as invalid JSON
        "answer": '{"attributes": {"brand": "Cora"}, "regulatory_safety": '
        '{"certification_marks": ["CE"',
        "deserves": (
            {"attributes": {"brand": "Cora"}, "regulatory_safety": {"certification_marks": ["CE"]}},
            False,
        ),
    },
}


def _units(answer: dict | None) -> set[tuple[str, str, str]]:
    """(group, field, value) units, case-folded: enough for the plain values used here."""
    units = set()
    for group, fields in (answer or {}).items():
        for name, value in fields.items():
            for item in value if isinstance(value, list) else [value]:
                units.add((group, name, str(item).casefold()))
    return units


def _expected_scores(predictions: dict[str, dict | None]) -> dict[str, float]:
    tp = predicted = reference = 0
    for item_id, item in TEST_ITEMS.items():
        pred, ref = _units(predictions.get(item_id)), _units(item["reference"])
        tp, predicted, reference = tp + len(pred & ref), predicted + len(pred), reference + len(ref)
    precision, recall = tp / predicted, tp / reference
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4),
    }


def _row(item_id: str, colours: list[tuple[int, int, int]], answer: dict) -> dict:
    from toolkit.dataset.rows import answer_text, example_row

    images = [Image.new("RGB", (64 + 8 * i, 48), colour) for i, colour in enumerate(colours)]
    return {
        "item_id": item_id,
        "category": "",
        **example_row(images, PROMPT, answer_text(answer)),
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from datasets import Dataset, DatasetDict

    from toolkit.dataset import dataset_features

    train = [
        _row(f"A{i}", [(20 * i, 100, 50), (50, 20 * i, 100)], {"attributes": {"brand": f"B{i}"}})
        for i in range(4)
    ]
    test = [
        _row(item_id, item["colours"], item["reference"]) for item_id, item in TEST_ITEMS.items()
    ]
    data = DatasetDict(
        {
            "train": Dataset.from_list(train, features=dataset_features()),
            "test": Dataset.from_list(test, features=dataset_features()),
        }
    )
    folder = tmp_path_factory.mktemp("dataset")
    data.save_to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_student, dataset_dir, tmp_path_factory) -> Path:
    """The tiny student after a few LoRA steps."""
    from finetune.train import TrainConfig, train

    config = TrainConfig(
        model=str(tiny_student),
        dataset=dataset_dir,
        output_dir=tmp_path_factory.mktemp("train"),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        eval_steps=None,
        gradient_checkpointing=False,
        seed=0,
    )
    return train(config).adapter_dir


def _near(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal colours up to JPEG rounding."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 3


def scripted(request: ChatRequest) -> Reply:
    """The scripted answer of the item whose first image has the nearest colour."""
    colour = np.array(mean_rgb(request.images[0]))
    item = min(
        TEST_ITEMS.values(),
        key=lambda it: float(((np.array(it["colours"][0]) - colour) ** 2).sum()),
    )
    return Reply(content=item["answer"])


def endpoint_yaml(folder: Path, server: FakeOpenAI, **extra: object) -> Path:
    path = folder / "vllm-student.yaml"
    config = {
        "name": "vllm-student",
        "base_url": server.base_url,
        "model": "croptune",
        "api_key_env": KEY_ENV,
        "max_concurrency": 2,
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def metrics_of(out: Path) -> dict[str, dict]:
    return {entry["model"]: entry for entry in json.loads((out / "metrics.json").read_text())}


def chat_requests(server: FakeOpenAI) -> list[ChatRequest]:
    return [ChatRequest(r.body_json) for r in server.requests if r.path.endswith("/completions")]


def test_endpoint_scores_what_the_scripted_answers_deserve(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "eval"
    with FakeOpenAI(scripted, api_key=SECRET) as server:
        config = endpoint_yaml(tmp_path, server)
        run_evaluate([str(config)], dataset_dir, out, max_new_tokens=64)
        requests = chat_requests(server)

    # The server saw every item once: its photos in order, then the prompt, with the LoRA
    # name as the model and evaluate's answer limit.
    assert len(requests) == len(TEST_ITEMS)
    seen = {}
    for request in requests:
        colours = [mean_rgb(image) for image in request.images]
        item_id = next(k for k, v in TEST_ITEMS.items() if _near(v["colours"][0], colours[0]))
        seen[item_id] = colours
        assert request.texts == [PROMPT]
        assert request.model == "croptune"
        assert request.body["max_tokens"] == 64
        assert "response_format" not in request.body
    assert seen.keys() == TEST_ITEMS.keys()
    for item_id, colours in seen.items():
        expected = TEST_ITEMS[item_id]["colours"]
        assert len(colours) == len(expected)
        assert all(_near(a, b) for a, b in zip(colours, expected, strict=True))

    entry = metrics_of(out)["vllm-student"]
    expected = _expected_scores({k: v["deserves"][0] for k, v in TEST_ITEMS.items()})
    assert {k: entry["micro"][k] for k in expected} == expected
    valid = sum(v["deserves"][1] for v in TEST_ITEMS.values())
    assert entry["json_valid_rate"] == round(valid / len(TEST_ITEMS), 4)
    assert entry["kind"] == "endpoint" and entry["examples"] == len(TEST_ITEMS)
    assert entry["answers"] == {"asked": 3, "cached": 0, "failed": 0}
    assert entry["latency"]["timed"] == 3 and entry["latency"]["p90"] >= entry["latency"]["p50"] > 0
    assert entry["examples_per_second"] > 0

    # Per item: what was answered, and the field errors to read.
    answers = {a["item_id"]: a for a in map(json.loads, (out / "answers.jsonl").open())}
    assert {k: (a["parsed"], a["json_valid"]) for k, a in answers.items()} == {
        k: v["deserves"] for k, v in TEST_ITEMS.items()
    }
    errors = {e["item_id"]: e for e in map(json.loads, (out / "errors.jsonl").open())}
    assert "T0" not in errors  # nothing to read for an exact answer
    assert {(f["field"], f["kind"]) for f in errors["T1"]["fields"]} == {
        ("attributes.color", "wrong"),
        ("attributes.material", "missed"),
    }
    assert errors["T2"]["json_valid"] is False

    # No output file holds the key, not even the cache.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_a_second_run_asks_nothing_again(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "eval"
    with FakeOpenAI(scripted, api_key=SECRET) as server:
        config = endpoint_yaml(tmp_path, server)
        run_evaluate([str(config)], dataset_dir, out)
        first = metrics_of(out)["vllm-student"]
        asked = len(chat_requests(server))
        run_evaluate([str(config)], dataset_dir, out)
        assert len(chat_requests(server)) == asked
        cached = metrics_of(out)["vllm-student"]
        cached_card = (out / "metrics.md").read_text()
        # Another answer limit is another question: asked again.
        run_evaluate([str(config)], dataset_dir, out, max_new_tokens=32)
        assert len(chat_requests(server)) == asked + len(TEST_ITEMS)
    again = metrics_of(out)["vllm-student"]
    assert again["micro"] == first["micro"]
    assert again["answers"] == {"asked": 3, "cached": 0, "failed": 0}
    # The run that asked nothing reports its answers as cached.
    assert cached["answers"] == {"asked": 0, "cached": 3, "failed": 0}
    assert cached["micro"] == first["micro"]
    # Latency is the original requests'; throughput needs answers timed in this run.
    assert cached["latency"]["p50"] == first["latency"]["p50"]
    assert cached["examples_per_second"] is None
    assert "| cached |" in cached_card


def test_a_server_error_then_ok_is_retried(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "eval"
    # Retry-After: 0 keeps the backoff out of the test's time.
    with FakeOpenAI(FailThen(1, Reply.fail(500, retry_after_s=0), scripted)) as server:
        run_evaluate([str(endpoint_yaml(tmp_path, server))], dataset_dir, out)
        statuses = len(chat_requests(server))
    entry = metrics_of(out)["vllm-student"]
    assert statuses == 2 * len(TEST_ITEMS)
    assert entry["answers"] == {"asked": 3, "cached": 0, "failed": 0}
    expected = _expected_scores({k: v["deserves"][0] for k, v in TEST_ITEMS.items()})
    assert entry["micro"]["f1"] == expected["f1"]


@pytest.mark.parametrize(
    ("server_key", "model", "message"),
    [
        # the server wants another key: no retry fixes that
        ("another-key", "croptune", "HTTP 401"),
        # the server does not serve that model name (a LoRA name typo)
        (SECRET, "croptun", "HTTP 404"),
    ],
)
def test_a_refusing_endpoint_is_a_user_error(
    dataset_dir, tmp_path, monkeypatch, server_key, model, message
):
    def serves_croptune(request: ChatRequest) -> Reply:
        if request.model != "croptune":
            return Reply.fail(404, f"The model `{request.model}` does not exist.")
        return scripted(request)

    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAI(serves_croptune, api_key=server_key) as server:
        config = endpoint_yaml(tmp_path, server, model=model)
        with pytest.raises(CroptuneError, match=message) as caught:
            run_evaluate([str(config)], dataset_dir, tmp_path / "eval")
        # Stopped at the first refusal: not every example asked, none retried.
        assert len(chat_requests(server)) <= 2
    assert "vllm-student" in str(caught.value)


def test_a_request_that_keeps_failing_is_an_error_row_and_asked_next_time(
    dataset_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "eval"
    with FakeOpenAI(FailThen(10, Reply.fail(503, retry_after_s=0), scripted)) as server:
        config = endpoint_yaml(tmp_path, server, max_retries=1)
        run_evaluate([str(config)], dataset_dir, out)
        entry = metrics_of(out)["vllm-student"]
        assert entry["answers"]["failed"] == 3
        assert entry["micro"]["tp"] == 0 and entry["json_valid_rate"] == 0
        errors = [json.loads(line) for line in (out / "errors.jsonl").open()]
        assert all("503" in e["error"] for e in errors) and len(errors) == 3
        before = len(chat_requests(server))
        run_evaluate([str(config)], dataset_dir, out)
        assert len(chat_requests(server)) == before + 2 * len(TEST_ITEMS)


def judge_brands_only(request: ChatRequest) -> Reply:
    """A judge that can see brands only: brand claims are correct, all else unverifiable."""
    claims = json.loads(request.texts[-1].split("Extracted values:\n", 1)[1])
    return Reply(
        content=json.dumps(
            {
                key: "verifiable_correct" if key == "attributes.brand" else "unverifiable"
                for key in claims
            }
        )
    )


def test_judge_bucket_rates_are_columns(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "eval"
    judge = tmp_path / "judge.yaml"
    with FakeOpenAI(scripted) as server, FakeOpenAI(judge_brands_only) as judge_server:
        judge.write_text(
            yaml.safe_dump(
                {"endpoint": {"base_url": judge_server.base_url, "model": "gpt-4.1",
                              "api_key_env": KEY_ENV}}
            )
        )  # fmt: skip
        run_evaluate([str(endpoint_yaml(tmp_path, server))], dataset_dir, out, judge=judge)
        judged = chat_requests(judge_server)
    # One request per item, with the item's photos.
    assert sorted(len(r.images) for r in judged) == sorted(
        len(v["colours"]) for v in TEST_ITEMS.values()
    )
    # Every claim of the deserved answers: one brand each (correct), the rest unverifiable.
    claims = [_units(v["deserves"][0]) for v in TEST_ITEMS.values()]
    n_claims = sum(len(c) for c in claims)
    correct = sum(1 for c in claims for unit in c if unit[1] == "brand")
    rates = metrics_of(out)["vllm-student"]["judge"]
    assert rates["judged_fields"] == n_claims
    assert rates["verifiable_correct"] == round(correct / n_claims, 4)
    assert rates["unverifiable"] == round((n_claims - correct) / n_claims, 4)
    assert rates["verifiable_incorrect"] == 0
    header = (out / "metrics.md").read_text().splitlines()[0]
    assert header.endswith("| judge: correct | judge: incorrect | judge: unverifiable |")


QWEN_T0 = {"attributes": {"brand": "Acme", "color": "blue"}}


def _labels_jsonl(path: Path) -> Path:
    lines = [
        # gpt answers every item exactly; qwen only T0, half right
        {"item_id": "T0", "labels": {"gpt": TEST_ITEMS["T0"]["reference"],
                                     "qwen": QWEN_T0}},
        {"item_id": "T1", "labels": {"gpt": TEST_ITEMS["T1"]["reference"]}},
        {"item_id": "T2", "labels": {"gpt": TEST_ITEMS["T2"]["reference"]}},
        {"item_id": "NOT-IN-SPLIT", "labels": {"other": {"attributes": {"brand": "x"}}}},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _labels_run(folder: Path) -> Path:
    from toolkit.store import RunStore

    with RunStore(folder) as store:
        for line in map(json.loads, _labels_jsonl(folder / "labels.jsonl").open()):
            for teacher, attributes in line["labels"].items():
                key = f"{teacher}-{line['item_id']}"
                store.record_answer(
                    key, teacher, "m", line["item_id"], None, "{}", {}, labels=attributes
                )
    return folder


@pytest.mark.parametrize(
    "make_source",
    [
        # a `labels export --format jsonl` file
        pytest.param(lambda tmp: _labels_jsonl(tmp / "labels.jsonl"), id="jsonl"),
        # a run folder's store
        pytest.param(lambda tmp: _labels_run(tmp / "run"), id="run"),
    ],
)
def test_teacher_labels_are_extra_rows(dataset_dir, tmp_path, make_source):
    out = tmp_path / "eval"
    results = run_evaluate([], dataset_dir, out, teacher_labels_from=make_source(tmp_path))
    assert [r.model for r in results] == ["teacher:gpt", "teacher:qwen"]
    metrics = metrics_of(out)
    assert metrics["teacher:gpt"]["micro"]["f1"] == 1.0
    assert metrics["teacher:gpt"]["json_valid_rate"] == 1.0
    qwen = _expected_scores({"T0": QWEN_T0})
    assert {k: metrics["teacher:qwen"]["micro"][k] for k in qwen} == qwen
    assert metrics["teacher:qwen"]["json_valid_rate"] == round(1 / 3, 4)
    for entry in metrics.values():
        assert entry["kind"] == "teacher" and entry["latency"] is None
    table = (out / "metrics.md").read_text()
    assert "| teacher:gpt | 3 | 1.00 | 1.000 | 1.000 | 1.000 |" in table


@pytest.mark.slow
def test_several_models_one_table_through_the_cli(
    adapter_dir, tiny_student, dataset_dir, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from croptune.cli import app

    monkeypatch.setenv(KEY_ENV, SECRET)
    out = tmp_path / "eval"
    with FakeOpenAI(scripted, api_key=SECRET) as server:
        config = endpoint_yaml(tmp_path, server)
        # In-process (the console script's import time saved); exit codes: the tests below.
        result = CliRunner().invoke(
            app,
            ["--no-progress", "evaluate", "--model", str(tiny_student),
             "--model", str(adapter_dir), "--model", str(config), "--dataset", str(dataset_dir),
             "--teacher-labels", str(_labels_jsonl(tmp_path / "labels.jsonl")),
             "--out", str(out), "--max-new-tokens", "8", "--batch-size", "2"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    names = [str(tiny_student), str(adapter_dir), "vllm-student", "teacher:gpt", "teacher:qwen"]
    assert list(metrics_of(out)) == names
    table = (out / "metrics.md").read_text().splitlines()
    assert table[0].startswith("| model | examples | JSON valid | P | R | F1 | F1 identifiers")
    rows = [line for line in table[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == names
    for name in names:  # the printed table too
        assert name in result.stdout
    metrics = metrics_of(out)
    for name in names[:2]:
        entry = metrics[name]
        assert entry["kind"] == "transformers" and entry["examples"] == len(TEST_ITEMS)
        assert entry["latency"]["mean"] > 0 and entry["examples_per_second"] > 0
    answers = [json.loads(line) for line in (out / "answers.jsonl").open()]
    assert len(answers) == len(names) * len(TEST_ITEMS)
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # no such folder
        (["--dataset", "{tmp}/missing"], "does not exist"),
        # a folder that is not a dataset
        (["--dataset", "{tmp}"], "is not a dataset folder"),
        # no such split: the ones there are named
        (["--dataset", "{dataset}", "--split", "validation"], "has no split 'validation'"),
    ],
)
def test_missing_dataset_or_split_is_a_user_error(dataset_dir, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, dataset=dataset_dir) for a in args]
    result = subprocess.run(
        [CROPTUNE, "--no-progress", "evaluate", "--model", "croptune:tiny", *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    if "split" in message:
        assert "train, test" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # the answer is scored as written: no schema-constrained decoding
        ({"structured_output": True}, "structured_output"),
        # keys only come from the environment
        ({"api_key_env": "sk-live-123"}, "NAME of an environment variable"),
        # a typo is named, not ignored
        ({"max_concurency": 4}, "max_concurency"),
    ],
)
def test_bad_endpoint_configs_are_user_errors(dataset_dir, tmp_path, extra, message):
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump({"base_url": "http://127.0.0.1:9/v1", "model": "m", **extra}))
    with pytest.raises(CroptuneError, match=message):
        run_evaluate([str(path)], dataset_dir, tmp_path / "eval")


def test_a_missing_key_variable_fails_before_any_model_runs(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAI(scripted) as server:
        config = endpoint_yaml(tmp_path, server)
        with pytest.raises(CroptuneError, match=KEY_ENV):
            # the in-process model is listed first but never loaded
            run_evaluate(["org/never-loaded", str(config)], dataset_dir, tmp_path / "eval")
        assert server.requests == []


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        # a bundle exported with --merge: the merged model, no adapter
        ({"croptune.yaml": "base_model: org/base\n", "merged/config.json": "{}"},
         ("{root}/merged", None)),
        # a bundle without merged/: its base + adapter/
        ({"croptune.yaml": "base_model: org/base\n", "adapter/adapter_config.json": "{}"},
         ("org/base", "{root}/adapter")),
        # an adapter folder: its base from adapter_config.json + itself
        ({"adapter_config.json": '{"base_model_name_or_path": "org/base"}'},
         ("org/base", "{root}")),
        # a plain model folder (a merged model)
        ({"config.json": "{}"}, ("{root}", None)),
    ],
)  # fmt: skip
def test_model_values_resolve_to_backends(tmp_path, layout, expected):
    root = tmp_path / "model"
    for name, text in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    backend = open_model(str(root))
    model, adapter = (None if e is None else e.format(root=root) for e in expected)
    assert backend.kind == "transformers" and backend.name == str(root)
    assert (backend.model, None if backend.adapter is None else str(backend.adapter)) == (
        model,
        adapter,
    )


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        # nothing timed (teachers, failures)
        ([], {"mean": None, "p50": None, "p90": None, "timed": 0}),
        # one value is every statistic
        ([2.0], {"mean": 2.0, "p50": 2.0, "p90": 2.0, "timed": 1}),
        # p90 interpolates between the two largest of ten
        ([float(i) for i in range(1, 11)], {"mean": 5.5, "p50": 5.5, "p90": 9.1, "timed": 10}),
    ],
)
def test_latency_stats(seconds, expected):
    assert latency_stats(seconds) == expected


@pytest.mark.parametrize("content", [None, "not arrow"], ids=["empty-folder", "other-files"])
def test_a_folder_that_is_no_saved_dataset_is_named_by_evaluate_and_catalog_alike(
    tmp_path, content
):
    # Caught: evaluate and the catalog reader each caught load_from_disk's errors by hand
    # (toolkit.saved_dataset now serves both); one catching fewer types would crash instead.
    from finetune.evaluate import load_split
    from toolkit.catalog import load_catalog

    folder = tmp_path / "folder"
    folder.mkdir()
    if content is not None:
        (folder / "data.txt").write_text(content)
    with pytest.raises(CroptuneError, match="is not a dataset folder written by `croptune dataset"):
        load_split(folder)
    with pytest.raises(CroptuneError, match="is not a dataset saved with save_to_disk"):
        load_catalog(folder)
