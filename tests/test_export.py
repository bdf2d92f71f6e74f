"""The serving bundle and the vLLM lint: a real tiny train -> export -> load it back."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.numpy import load_file, save_file

from finetune.export.lint import LintProblem, lint_adapter
from finetune.export.manifest import base_model_id
from finetune.export.writer import export_bundle
from tests.fake_openai import FakeOpenAI, FixedAnswer
from tests.training import random_rows
from toolkit.errors import CroptuneError

CROPTUNE = str(Path(sys.executable).parent / "croptune")
SECRETS = {
    "OPENAI_API_KEY": "sk-test-secret-0123456789abcdef",
    "VLLM_API_KEY": "vllm-test-secret-fedcba9876543210",
}
STEPS = 8


def _schema():  # noqa: ANN202 - AttributeSchema
    from toolkit.schema import load_schema

    return load_schema("compliance")


def _prompt(title: str | None) -> str:
    from toolkit.schema import extraction_prompt, listing_text

    return extraction_prompt(_schema(), listing_text(title, None))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved DatasetDict plus the croptune_dataset.json that `dataset build` writes."""
    from datasets import Dataset, DatasetDict

    from toolkit.crops import CropConfig
    from toolkit.dataset import DatasetConfig, dataset_features
    from toolkit.dataset.build import DatasetSummary

    rng = random.Random(0)
    splits = {"train": 6, "test": 2}
    rows = {
        name: random_rows(rng, n, 100 * k, lambda i: _prompt(f"Kettle {i}"), max_images=3)
        for k, (name, n) in enumerate(splits.items())
    }
    folder = tmp_path_factory.mktemp("dataset")
    DatasetDict(
        {name: Dataset.from_list(r, features=dataset_features()) for name, r in rows.items()}
    ).save_to_disk(folder)
    summary = DatasetSummary(
        examples=splits, images_per_example=[len(r["images"]) for rs in rows.values() for r in rs]
    )
    facts = {
        "config": DatasetConfig(max_image_side=1024).model_dump(mode="json"),
        "schema": _schema().model_dump(mode="json"),
        "crop_config": CropConfig().model_dump(mode="json"),
        "stats": summary.stats(),
    }
    (folder / "croptune_dataset.json").write_text(json.dumps(facts))
    return folder


@pytest.fixture(scope="module")
def adapter(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA adapter of the tiny student, trained with API keys in the environment."""
    from finetune.students import resolve_student
    from finetune.train import TrainConfig, train

    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        config = TrainConfig(
            student="tiny",
            dataset=dataset_dir,
            output_dir=tmp_path_factory.mktemp("train"),
            max_steps=STEPS,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=1e-2,  # large: the adapter must change the greedy answers
            warmup_ratio=0.0,
            logging_steps=1,
            gradient_checkpointing=False,
            seed=0,
        )
        result = train(config)
    # What `croptune evaluate` writes beside the adapter: base, student and a teacher, with
    # the local paths evaluate records as model names.
    metric = {"split": "test", "examples": 2, "json_valid_rate": 0.5, "seconds_per_example": 0.2,
              "dataset": str(dataset_dir)}  # fmt: skip
    entries = [
        {"model": resolve_student("croptune:tiny"), **metric,
         "micro": {"precision": 0.0, "recall": 0.0, "f1": 0.0}},
        {"model": str(result.adapter_dir), **metric,
         "micro": {"precision": 0.5, "recall": 0.25, "f1": 0.3333}},
        {"model": "gpt-4.1", **metric, "micro": {"precision": 0.9, "recall": 0.8, "f1": 0.8471}},
    ]  # fmt: skip
    (result.adapter_dir / "eval").mkdir()
    (result.adapter_dir / "eval" / "metrics.json").write_text(json.dumps(entries))
    return result.adapter_dir


def croptune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **SECRETS}
    return subprocess.run(
        [CROPTUNE, "--no-progress", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def bundle(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`croptune export --merge` of the trained adapter, run as a user would."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    result = croptune("export", "--adapter", str(adapter), "--out", str(out), "--merge",
                      cwd=out.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "bundle written to" in result.stdout
    return out


def _copy_adapter(adapter: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(adapter, target)
    path = target / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return target


def _rename_tensors(folder: Path, rename: dict[str, str], extra: dict[str, tuple] | None = None):
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for name, value in tensors.items():
        for old, new in rename.items():
            name = name.replace(old, new)
        renamed[name] = value
    for name, shape in (extra or {}).items():
        renamed[name] = np.zeros(shape, dtype=np.float32)
    save_file(renamed, path)


# --------------------------------------------------------------------------- lint


def test_lint_accepts_the_adapter_croptune_trains(adapter):
    assert lint_adapter(adapter) == []


VISION_REGEX = r"model\.vision_tower\.vision_model\.encoder\.layers\.\d+\.self_attn\.q_proj"
A_LORA_A = "language_model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize(
    ("changes", "tensors", "rule", "level", "names"),
    [
        # a fully trained lm_head copy: vLLM loads LoRA weights only
        ({"modules_to_save": ["lm_head"]}, None, "modules-to-save", "error", "lm_head"),
        # DoRA's magnitude vectors are not served
        ({"use_dora": True}, None, "dora", "error", "use_dora"),
        # biases trained on the base layers
        ({"bias": "all"}, None, "bias", "error", "'all'"),
        # biases on the LoRA layers only: refused the same way
        ({"bias": "lora_only"}, None, "bias", "error", "'lora_only'"),
        # above vLLM's largest --max-lora-rank
        ({"r": 1024}, None, "rank", "error", "r = 1024"),
        # a per-module rank above it
        ({"rank_pattern": {"q_proj": 1024}}, None, "rank", "error", "r = 1024"),
        # not a rank at all
        ({"r": 0}, None, "rank", "error", "r = 0"),
        # PiSSA, its fast-SVD spelling, OLoRA, CorDA, LoftQ: all rewrite the base weights
        ({"init_lora_weights": "pissa"}, None, "init", "error", "'pissa'"),
        ({"init_lora_weights": "pissa_niter_4"}, None, "init", "error", "'pissa_niter_4'"),
        ({"init_lora_weights": "olora"}, None, "init", "error", "'olora'"),
        ({"init_lora_weights": "corda"}, None, "init", "error", "'corda'"),
        ({"init_lora_weights": "loftq"}, None, "init", "error", "'loftq'"),
        # LoRA on a bare parameter (Gemma 3's projector weight) via peft's ParamWrapper
        (
            {"target_parameters": ["model.multi_modal_projector.mm_input_projection_weight"]},
            None, "target-parameters", "error", "mm_input_projection_weight",
        ),
        # not LoRA at all
        ({"peft_type": "IA3"}, None, "peft-type", "error", "'IA3'"),
        # a regex on SigLIP's layers
        ({"target_modules": VISION_REGEX}, None, "vision-target", "warning", "vision_tower"),
        # plain names also match SigLIP's q_proj/v_proj
        ({"target_modules": ["q_proj", "v_proj"]}, None, "vision-target", "warning", "q_proj"),
        # all-linear includes the vision tower
        ({"target_modules": "all-linear"}, None, "vision-target", "warning", "all-linear"),
        # the weights themselves sit on the vision tower, whatever the config says
        ({}, {"language_model": "vision_tower"}, "vision-weights", "warning", "vision_tower"),
        # Qwen2.5-VL's vision blocks and merger
        ({}, {"language_model.layers.0": "visual.merger"}, "vision-weights", "warning", "visual"),
        # a DoRA magnitude tensor left in the file
        (
            {}, {"+base_model.model.model.language_model.layers.0.self_attn.q_proj"
                 ".lora_magnitude_vector": (64,)},
            "tensor-names", "error", "lora_magnitude_vector",
        ),
    ],
)  # fmt: skip
def test_lint_flags_what_vllm_refuses_or_ignores(
    adapter, tmp_path, changes, tensors, rule, level, names
):
    folder = _copy_adapter(adapter, tmp_path / "adapter", **changes)
    if tensors:
        extra = {k[1:]: v for k, v in tensors.items() if k.startswith("+")}
        rename = {k: v for k, v in tensors.items() if not k.startswith("+")}
        _rename_tensors(folder, rename, extra)
    problems = lint_adapter(folder)
    hits = [p for p in problems if p.rule == rule]
    assert len(hits) == 1, problems
    problem = hits[0]
    assert problem.level == level
    assert problem.message.startswith(("adapter_config.json: ", "adapter_model.safetensors: "))
    assert names in problem.message
    assert problem.fix
    if rule.startswith("vision"):
        assert "--enable-tower-connector-lora" in problem.message
        assert "adapt: language" in problem.fix
    # Only this rule, except where one cause shows in both the config and the tensors.
    assert {p.rule for p in problems} == {rule}


@pytest.mark.parametrize(
    "changes",
    [
        # a classification head is the one modules_to_save vLLM loads
        {"modules_to_save": ["score"]},
        # Gaussian init and plain random init leave the base untouched
        {"init_lora_weights": "gaussian"},
        {"init_lora_weights": False},
        # rsLoRA only changes the scale, which vLLM reads
        {"use_rslora": True, "r": 16},
        # the largest rank vLLM serves
        {"r": 512},
        # below --max-lora-rank's choices: vLLM serves it under --max-lora-rank 8
        {"r": 4},
        # per-module ranks and alphas: vLLM reads them (same logprobs as peft, test_vllm.py)
        {"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"q_proj": 64}},
        # list targets that cannot reach SigLIP or Qwen's vision blocks
        {"target_modules": ["language_model.layers.0.self_attn.q_proj"]},
    ],
)
def test_lint_accepts_what_vllm_serves(adapter, tmp_path, changes):
    assert lint_adapter(_copy_adapter(adapter, tmp_path / "adapter", **changes)) == []


def test_lint_problem_reads_as_one_line():
    problem = LintProblem("rank", "error", "adapter_config.json: r = 4 is bad", "retrain")
    assert str(problem) == "error [rank] adapter_config.json: r = 4 is bad. Fix: retrain."


def test_lint_of_a_folder_without_adapter_is_a_user_error(tmp_path):
    with pytest.raises(CroptuneError, match="not a LoRA adapter folder"):
        lint_adapter(tmp_path)


# --------------------------------------------------------------------------- bundle


@pytest.mark.slow  # the bundle fixture: `croptune export --merge`, ~15 s
def test_bundle_layout_and_manifest(bundle, dataset_dir):
    from toolkit.crops import CropConfig

    assert {p.name for p in bundle.iterdir()} == {
        "adapter", "merged", "base", "croptune.yaml", "README.md"
    }  # fmt: skip
    # No hub has the tiny base: the bundle carries it, with the names vLLM loads.
    from finetune.students.checkpoints import checkpoint_name_problems

    assert (bundle / "base" / "model.safetensors").is_file()
    assert checkpoint_name_problems(bundle / "base") == []
    assert checkpoint_name_problems(bundle / "merged") == []
    adapter_files = {p.name for p in (bundle / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "processor_config.json", "chat_template.jinja"} <= adapter_files  # fmt: skip
    assert not {"train_config.yaml", "train_stats.json", "training_args.bin"} & adapter_files
    config = json.loads((bundle / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "croptune:tiny"
    assert (bundle / "merged" / "model.safetensors").is_file()
    assert (bundle / "merged" / "chat_template.jinja").is_file()

    text = (bundle / "croptune.yaml").read_text()
    # Plain YAML: the student's metrics appear twice (metrics, evaluations), never as an alias.
    assert "&id" not in text and "*id" not in text
    manifest = yaml.safe_load(text)
    assert manifest["metrics"] == manifest["evaluations"][1]
    assert manifest["base_model"] == "croptune:tiny"
    assert manifest["base_folder"] == "base"
    assert manifest["lora_name"] == "croptune-tiny"
    # The exact training instructions: the dataset's prompt is them plus the listing text.
    from datasets import load_from_disk

    trained_text = load_from_disk(str(dataset_dir))["test"][0]["prompt"][0]["content"][-1]["text"]
    assert trained_text.startswith(manifest["prompt"]["instructions"])
    assert trained_text == (manifest["prompt"]["instructions"] + "\n\nListing text:\nKettle 100")
    assert manifest["prompt"]["order"] == ["originals", "crops", "text"]
    assert manifest["image_budget"] == 9
    assert CropConfig.model_validate(manifest["crop"]) == CropConfig()
    assert manifest["schema"]["name"] == "compliance"
    assert manifest["lora"]["r"] == 8 and manifest["lora"]["max_lora_rank"] == 8
    assert manifest["lint"] == {"vllm_servable": True, "errors": 0, "warnings": 0, "problems": []}
    assert manifest["metrics"]["micro"]["f1"] == 0.3333
    assert [e["model"] for e in manifest["evaluations"]] == [
        "croptune:tiny (base, zero-shot)",
        "student (this adapter)",
        "gpt-4.1",
    ]


@pytest.mark.slow  # the bundle fixture: `croptune export --merge`, ~15 s
def test_model_card_serves_the_adapter_as_trained(bundle):
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\nbase_model: croptune:tiny\n")
    for flag in (
        "vllm serve ./base --served-model-name croptune:tiny",
        "--enable-lora",
        "--lora-modules croptune-tiny=./adapter",
        "--max-lora-rank 8",
        """--limit-mm-per-prompt '{"image": 9}'""",
        "--chat-template ./adapter/chat_template.jinja",
    ):
        assert flag in card, flag
    assert "--enable-tower-connector-lora" not in card  # language-only LoRA
    # The metrics table: base vs student vs teacher.
    assert "| croptune:tiny (base, zero-shot) | test | 2 | 0.50 | 0.000 | 0.000 | 0.000 |" in card
    assert "| student (this adapter) | test | 2 | 0.50 | 0.500 | 0.250 | 0.333 |" in card
    assert "| gpt-4.1 |" in card
    assert "Servable by vLLM: 0 error(s), 0 warning(s)." in card


@pytest.mark.slow
def test_adapter_and_merged_model_answer_with_the_same_tokens(bundle, dataset_dir):
    from datasets import load_from_disk

    from finetune.infer import load_student

    test = load_from_disk(str(dataset_dir))["test"]
    examples = [(row["images"], row["prompt"]) for row in test]
    base_id = yaml.safe_load((bundle / "croptune.yaml").read_text())["base_model"]
    with_adapter = _greedy_tokens(*load_student(base_id, bundle / "adapter"), examples)
    assert with_adapter == _greedy_tokens(*load_student(str(bundle / "merged")), examples)
    # Not a vacuous match: the LoRA changed what the base answers.
    assert with_adapter != _greedy_tokens(*load_student(base_id), examples)


def _greedy_tokens(model, processor, examples, max_new_tokens: int = 10) -> list[list[int]]:
    """New token ids of greedy generation, inputs built as finetune.infer builds them."""
    import torch

    texts = [
        processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for _, messages in examples
    ]
    inputs = processor(
        text=texts,
        images=[list(images) for images, _ in examples],
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[:, inputs["input_ids"].shape[1] :].tolist()


def _text_of(path: Path) -> str:
    """A file as text: a .safetensors header, else the bytes as UTF-8 (binaries as Latin-1)."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        size = int.from_bytes(data[:8], "little")
        data = data[8 : 8 + size]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@pytest.mark.slow  # the bundle fixture: `croptune export --merge`, ~15 s
def test_bundle_holds_no_secret_and_no_local_path(bundle, adapter, dataset_dir):
    from finetune.students import resolve_student
    from finetune.students.tiny import default_cache_dir

    forbidden = {
        **{value: name for name, value in SECRETS.items()},
        str(dataset_dir): "dataset folder",
        str(adapter): "adapter folder",
        str(adapter.parent): "training output folder",
        str(bundle.parent): "bundle's parent folder",
        str(default_cache_dir()): "croptune cache",
        resolve_student("croptune:tiny"): "local base model",
        os.environ["HF_HOME"]: "HF_HOME",
        str(Path.home()): "home folder",
        str(Path(__file__).parent.parent): "the source checkout",
    }
    files = [p for p in bundle.rglob("*") if p.is_file()]
    # Every file, the processor/tokenizer configs, the model card and croptune.yaml included.
    assert {"tokenizer_config.json", "processor_config.json", "README.md", "croptune.yaml",
            "config.json", "generation_config.json"} <= {p.name for p in files}  # fmt: skip
    for path in files:
        text = _text_of(path)
        for needle, what in forbidden.items():
            assert needle not in text, f"{what} leaked into {path.relative_to(bundle)}"


def test_export_refuses_a_bundle_that_would_leak(adapter, tmp_path, monkeypatch):
    # A secret whose value is also the LoRA name: it would land in the model card.
    monkeypatch.setenv("CUSTOMER_API_KEY", "acme-secret-lora")
    out = tmp_path / "bundle"
    with pytest.raises(CroptuneError, match=r"the value of \$CUSTOMER_API_KEY in README.md"):
        export_bundle(adapter, out, lora_name="acme-secret-lora")
    assert list(tmp_path.iterdir()) == []  # nothing written, no half bundle left


def test_export_replaces_an_earlier_bundle_but_nothing_else(adapter, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(adapter, out)
    export_bundle(adapter, out, lora_name="second")
    assert yaml.safe_load((out / "croptune.yaml").read_text())["lora_name"] == "second"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(CroptuneError, match="not a croptune bundle"):
        export_bundle(adapter, other)
    assert (other / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("model", "override", "expected"),
    [
        # a hub id is the id
        ("google/gemma-3-4b-it", None, "google/gemma-3-4b-it"),
        # the offline tiny student keeps its croptune name
        ("croptune:tiny", None, "croptune:tiny"),
        # a hub cache snapshot folder names its repository
        ("/data/hf/hub/models--google--gemma-3-4b-it/snapshots/0123abcd", None,
         "google/gemma-3-4b-it"),
        # a local folder needs the user to say what it is
        ("/data/models/my-gemma", None, CroptuneError),
        # ...which --base-model does
        ("/data/models/my-gemma", "google/gemma-3-12b-it", "google/gemma-3-12b-it"),
        # but --base-model must itself be an id
        ("/data/models/my-gemma", "/data/models/my-gemma", CroptuneError),
    ],
)  # fmt: skip
def test_base_model_id_is_never_a_local_path(tmp_path, model, override, expected):
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump({"student": "tiny", "model": model}))
    (tmp_path / "adapter_config.json").write_text("{}")
    if expected is CroptuneError:
        with pytest.raises(CroptuneError, match="base-model"):
            base_model_id(tmp_path, override)
    else:
        assert base_model_id(tmp_path, override) == expected


# --------------------------------------------------------------------------- client side


@pytest.mark.slow  # the bundle fixture: `croptune export --merge`, ~15 s
def test_model_card_client_sends_what_the_student_was_trained_on(bundle, tmp_path, monkeypatch):
    """The README's openai snippet, against a real HTTP server: images and prompt as trained."""
    from toolkit.dataset.rows import example_row, fit_image

    card = (bundle / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    photos = []
    for index, size in enumerate([(1300, 700), (200, 300)]):  # one above originals_max_side
        path = tmp_path / f"photo_{index}.png"
        Image.effect_noise(size, 40 + index).convert("RGB").save(path)
        photos.append(path)
    crops = [Image.effect_noise((96, 96), 10).convert("RGB")]
    answer = {"attributes": {"brand": "Acme"}}
    with FakeOpenAI(FixedAnswer(json.dumps(answer))) as server:
        monkeypatch.chdir(bundle)
        namespace: dict = {"__name__": "snippet"}
        exec(code.replace("http://localhost:8000/v1", server.base_url), namespace)
        assert namespace["extract"](photos, crops, title="Kettle 100") == answer
        (request,) = server.requests
    sent = request.body_json
    assert sent["model"] == "croptune-tiny" and sent["temperature"] == 0
    parts = sent["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
    originals = [fit_image(Image.open(p).convert("RGB"), 1024) for p in photos]
    trained = example_row(originals + crops, _prompt("Kettle 100"), "{}")
    assert parts[-1]["text"] == trained["prompt"][0]["content"][-1]["text"]
    urls = [p["image_url"]["url"] for p in parts[:-1]]
    assert all(url.startswith("data:image/png;base64,") for url in urls)
    received = [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) for url in urls]
    for got, want in zip(received, trained["images"], strict=True):
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want))


# --------------------------------------------------------------------------- CLI


def test_cli_export_of_a_bad_adapter_exits_1_and_lists_every_violation(adapter, tmp_path):
    bad = _copy_adapter(adapter, tmp_path / "bad", r=1024, use_dora=True, bias="all",
                        modules_to_save=["lm_head"])  # fmt: skip
    _rename_tensors(bad, {"language_model": "vision_tower"})
    result = croptune("export", "--adapter", str(bad), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    for rule in ("rank", "dora", "bias", "modules-to-save"):
        assert sum(line.startswith(f"error [{rule}] ") for line in lines) == 1, result.stdout
    assert sum(line.startswith("warning [vision-weights] ") for line in lines) == 1
    assert "4 error(s), 1 warning(s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()

    forced = croptune("export", "--adapter", str(bad), "--out", str(tmp_path / "b"), "--force",
                      cwd=tmp_path)  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    manifest = yaml.safe_load((tmp_path / "b" / "croptune.yaml").read_text())
    assert manifest["lint"]["vllm_servable"] is False and manifest["lint"]["errors"] == 4
    assert (
        "NOT servable by vLLM: 4 error(s), 1 warning(s)."
        in (tmp_path / "b" / "README.md").read_text()
    )


def test_cli_check_lints_a_good_adapter_and_writes_nothing(adapter, tmp_path):
    result = croptune("export", "--adapter", str(adapter), "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 error(s), 0 warning(s)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _python_block(markdown: str, containing: str) -> str:
    blocks = [b.split("```", 1)[0] for b in markdown.split("```python\n")[1:]]
    (block,) = [b for b in blocks if containing in b]
    return block


@pytest.mark.slow  # the bundle fixture: `croptune export --merge`, ~15 s
def test_serving_doc_crops_and_client_send_training_images(bundle, monkeypatch):
    """docs/serving.md's item_images() + extract(): crops, de-duplication, budget, order."""
    from toolkit.boxes import Box
    from toolkit.crops import CropConfig
    from toolkit.crops.plan import plan_crops

    doc = (Path(__file__).parent.parent / "docs" / "serving.md").read_text()
    monkeypatch.chdir(bundle.parent)  # the doc reads bundle/croptune.yaml
    crops_ns: dict = {"__name__": "doc"}
    exec(_python_block(doc, "def item_images"), crops_ns)
    main = Image.effect_noise((1200, 900), 30).convert("RGB")
    other = Image.effect_noise((300, 400), 60).convert("RGB")
    photos = [main, other, main.copy()]  # the third repeats the main photo: pHash drops it
    boxes = [Box(0, 100, 100, 180, 140, "text"), Box(0, 150, 120, 220, 160, "text"),
             Box(1, 10, 10, 60, 40, "barcode")]  # fmt: skip
    images = crops_ns["item_images"](photos, boxes)
    # Main photo (downscaled to 1024), the other photo, then one square crop per boxed photo.
    squares = [p.region for p in plan_crops(boxes, {0: (1200, 900), 1: (300, 400)}, CropConfig())]
    assert [im.size for im in images] == [(1024, 768), (300, 400)] + [
        (x2 - x1, y2 - y1) for x1, y1, x2, y2 in squares
    ]
    assert len(squares) == 2 and squares[0][2] - squares[0][0] == squares[0][3] - squares[0][1]
    assert np.array_equal(np.asarray(images[2]), np.asarray(main.crop(squares[0])))
    assert np.array_equal(np.asarray(images[1]), np.asarray(other))

    client_ns: dict = {"__name__": "doc"}
    with FakeOpenAI(FixedAnswer('{"attributes": {"brand": "Acme"}}')) as server:
        code = _python_block(doc, "def extract").replace(
            "http://localhost:8000/v1", server.base_url
        )
        exec(code, client_ns)
        assert client_ns["extract"](images, title="Kettle 100") == {"attributes": {"brand": "Acme"}}
        (request,) = server.requests
    parts = request.body_json["messages"][0]["content"]
    assert parts[-1] == {"type": "text", "text": _prompt("Kettle 100")}
    sent = [p["image_url"]["url"].split(",", 1)[1] for p in parts[:-1]]
    for url, image in zip(sent, images, strict=True):
        got = Image.open(io.BytesIO(base64.b64decode(url)))
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(image))


def test_export_ships_the_detector_without_its_training_data(adapter, tmp_path):
    # The files `croptune detector train` leaves (weights are copied, never loaded, here).
    detector = tmp_path / "detector"
    (detector / "dataset" / "images").mkdir(parents=True)
    (detector / "dataset" / "images" / "a.jpg").write_bytes(b"training photo")
    (detector / "detector.pt").write_bytes(b"weights")
    (detector / "metrics.json").write_text('{"metrics": {"recall": 0.5}}')
    settings = {"weights": "detector.pt", "classes": ["region"], "imgsz": 640,
                "run": str(tmp_path / "run"), "metrics": {"recall": 0.5}}  # fmt: skip
    (detector / "detector.yaml").write_text(yaml.safe_dump(settings))
    out = export_bundle(adapter, tmp_path / "bundle", detector_dir=detector)
    assert {p.name for p in (out / "detector").iterdir()} == {
        "detector.pt", "detector.yaml", "metrics.json",
    }  # fmt: skip
    assert (out / "detector" / "detector.pt").read_bytes() == b"weights"
    shipped = yaml.safe_load((out / "detector" / "detector.yaml").read_text())
    assert shipped == {k: v for k, v in settings.items() if k != "run"}
    manifest = yaml.safe_load((out / "croptune.yaml").read_text())
    assert manifest["box_source"] == "detector"
    assert manifest["detector"]["weights"] == "detector/detector.pt"
    assert "`detector/`" in (out / "README.md").read_text()
    with pytest.raises(CroptuneError, match=r"holds no detector\.pt"):
        export_bundle(adapter, tmp_path / "bundle2", detector_dir=tmp_path)


def test_cli_export_says_what_it_found_lint_and_metrics(adapter, tmp_path):
    """No metrics is said at the console, not only written as 'Not evaluated' in the card."""
    adapter = Path(shutil.copytree(adapter, tmp_path / "adapter"))  # the fixture stays whole
    shutil.rmtree(adapter / "eval", ignore_errors=True)
    out = tmp_path / "bundle"
    result = croptune("export", "--adapter", str(adapter), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "vLLM lint" in result.stdout and "0 error(s), 0 warning(s)" in result.stdout
    assert f"warning: no metrics ({adapter / 'eval' / 'metrics.json'} does not exist)" in (
        result.stderr.replace("\n", "")
    )
    assert "Not evaluated" in (out / "README.md").read_text()
