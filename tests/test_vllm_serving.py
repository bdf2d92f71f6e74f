"""The demo's bundle served by a real vLLM (the CPU build in .venv-vllm), as its card says.

One server per module, started with the model card's `vllm serve` command verbatim (plus
--host/--port) from the bundle folder; a second one serves the merged export. What is checked:
the card's command and client snippet work, vLLM's logprobs equal transformers + peft,
croptune's predict/evaluate talk to it and get the answers in-process inference gives, several
adapters at once and at run time, and what vLLM does with each adapter the lint flags.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from finetune.students.lora import LORA_TARGETS
from tests.vllm_server import VLLMServer, split_command

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CROPTUNE = str(Path(sys.executable).parent / "croptune")
# Text-only prompts: vLLM and transformers run the same float32 arithmetic (seen: ~2e-6).
TEXT_TOLERANCE = 1e-3
# With images, vLLM 0.32's CPU attention lacks the "mm_prefix" mode that lets Gemma 3's image
# tokens attend to each other within an image (its GPU FlashAttention backend has it), so they
# attend causally. transformers with causal image attention (token_type_ids left out) equals
# vLLM within TEXT_TOLERANCE (seen: ~1e-6); with transformers' own bidirectional attention the
# first-token logprobs of the demo student differed by up to 0.18 (random photos) and 0.05
# (catalog photos). The bound leaves room for other photos, and test_image_logprobs proves the
# mask is the cause, so a drift from anything else fails the causal comparison.
IMAGE_TOLERANCE = 0.5
LORA_NAME = "croptune-tiny"
BASE_NAME = "croptune:tiny"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The whole pipeline on the example catalog: run, dataset, adapter, bundle (tiny base inside)."""
    from tests.bundles import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("demo"), n_items=30, max_steps=60)


def card_block(card: str, heading: str, index: int = 0) -> str:
    """The index-th ```bash block after a heading of a model card."""
    section = card.split(heading, 1)[1]
    return section.split("```bash\n")[1 + index].split("```", 1)[0]


@pytest.fixture(scope="module")
def server(demo, vllm_sandbox: Path) -> Any:
    """The model card's command, verbatim, run from the bundle folder."""
    card = (demo.bundle / "README.md").read_text()
    argv = split_command(card_block(card, "## Serve with vLLM"))
    assert argv[:2] == ["vllm", "serve"]
    with VLLMServer(
        argv[1:],
        cwd=demo.bundle,
        log=vllm_sandbox / "card-server.log",
        # Runtime loading is switched on by the environment only: the command stays verbatim.
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> Any:
    """The openai client on the server."""
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def hf(demo) -> Any:
    """transformers models on the bundle's own files: base, base + adapter, and the processor."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def base() -> Any:
        return AutoModelForImageTextToText.from_pretrained(
            str(demo.bundle / "base"), dtype=torch.float32
        ).eval()

    processor = AutoProcessor.from_pretrained(str(demo.bundle / "adapter"))
    student = PeftModel.from_pretrained(base(), str(demo.bundle / "adapter")).eval()
    return {BASE_NAME: base(), LORA_NAME: student, "processor": processor}


def catalog_photos(demo, n: int = 2) -> list[Path]:
    """The first item's photos from the demo catalog."""
    item = json.loads((demo.workdir / "catalog" / "catalog.jsonl").read_text().splitlines()[0])
    return [demo.workdir / "catalog" / path for path in item["images"][:n]]


# --------------------------------------------------------------------------- logprob helpers


def first_token_logprobs(client, model: str, messages: list[dict]) -> tuple[dict[int, float], int]:
    """vLLM's top-5 first-token logprobs by token id, and its prompt token count."""
    reply = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
        extra_body={"return_tokens_as_token_ids": True},
    )
    top = reply.choices[0].logprobs.content[0].top_logprobs
    return {int(t.token.split(":")[1]): t.logprob for t in top}, reply.usage.prompt_tokens


def hf_inputs(processor, images: list[Image.Image], messages: list[dict], causal: bool) -> Any:
    """The processor's inputs for a chat; causal drops Gemma 3's bidirectional image mask."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=text, images=images or None, return_tensors="pt", add_special_tokens=False
    )
    if causal:
        inputs.pop("token_type_ids", None)
        inputs.pop("mm_token_type_ids", None)
    return inputs


def hf_next_logprobs(model, inputs: Any) -> Any:
    """transformers' next-token logprobs after the whole prompt."""
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(**inputs).logits[0, -1].float(), -1)


def sent_messages(images: list[Image.Image], text: str) -> list[dict]:
    """One user message: the images as PNG data URLs (what croptune sends), then the text."""
    import base64

    from toolkit.images import encode_png

    parts = [
        {
            "type": "image_url",
            "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(encode_png(im)).decode()
            },
        }
        for im in images
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def placeholder_messages(n_images: int, text: str) -> list[dict]:
    """The same message as the processor's chat template takes it."""
    parts = [{"type": "image"} for _ in range(n_images)]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def max_difference(vllm: dict[int, float], hf: Any) -> float:
    """The largest |vLLM - transformers| over vLLM's top tokens."""
    return max(abs(float(hf[token]) - value) for token, value in vllm.items())


# --------------------------------------------------------------------------- the card


def test_card_command_serves_base_and_adapter(server, client):
    import urllib.request

    from finetune.export.lint import VLLM_CHECKED

    served = {model.id for model in client.models.list()}
    # The base under the manifest's name (a zero-shot baseline on the same server), the LoRA.
    assert served == {BASE_NAME, LORA_NAME}, served
    # The lint's and the card's claims name the vLLM these tests run.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/version", timeout=10) as reply:
        version = json.loads(reply.read())["version"]
    assert version.split("+")[0] == VLLM_CHECKED, (
        f"the lint was checked against vLLM {VLLM_CHECKED}; this server is {version}"
    )


def test_card_client_snippet_sends_two_images_that_vllm_counts(
    demo, server, client, hf, monkeypatch
):
    """The card's python snippet, verbatim but for the URL, against the served adapter."""
    card = (demo.bundle / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(demo.bundle)  # the snippet reads croptune.yaml from the bundle folder
    namespace: dict = {"__name__": "snippet"}
    exec(code.replace("http://localhost:8000/v1", server.base_url), namespace)
    photos = catalog_photos(demo)
    try:
        answer = namespace["extract"](photos, title="Kettle 100")
    except json.JSONDecodeError as error:  # the demo's toy student rarely writes valid JSON
        answer = error.doc
    # The same two images and prompt, asked directly: vLLM counts exactly the processor's tokens.
    originals = [namespace["load_original"](p) for p in photos]
    manifest = namespace["MANIFEST"]
    text = manifest["prompt"]["instructions"] + "\n\nListing text:\nKettle 100"
    reply = client.chat.completions.create(
        model=LORA_NAME,
        messages=sent_messages(originals, text),
        temperature=0,
        max_tokens=manifest["prompt"]["decoding"]["max_new_tokens"],
    )
    direct = reply.choices[0].message.content
    assert (answer if isinstance(answer, str) else json.loads(direct)) == direct
    inputs = hf_inputs(hf["processor"], originals, placeholder_messages(2, text), causal=False)
    assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]
    image_token = hf["processor"].tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert int((inputs["input_ids"] == image_token).sum()) == 2 * manifest["image_tokens"]


# --------------------------------------------------------------------------- logprobs


@pytest.mark.parametrize("model", [BASE_NAME, LORA_NAME])
def test_text_logprobs_equal_transformers(client, hf, model):
    text = "Read the printed text and answer with ONE JSON object."
    vllm, prompt_tokens = first_token_logprobs(client, model, sent_messages([], text))
    inputs = hf_inputs(hf["processor"], [], placeholder_messages(0, text), causal=False)
    assert prompt_tokens == inputs["input_ids"].shape[1]
    difference = max_difference(vllm, hf_next_logprobs(hf[model], inputs))
    assert difference <= TEXT_TOLERANCE, (model, difference)


@pytest.mark.parametrize("model", [BASE_NAME, LORA_NAME])
def test_image_logprobs_differ_from_transformers_only_by_the_image_mask(demo, client, hf, model):
    photos = [Image.open(p).convert("RGB") for p in catalog_photos(demo)]
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (100, 130, 3), dtype=np.uint8))
    for images in (photos, [noise, photos[0]]):
        text = "Read the printed text."
        vllm, prompt_tokens = first_token_logprobs(client, model, sent_messages(images, text))
        messages = placeholder_messages(len(images), text)
        causal = hf_inputs(hf["processor"], images, messages, causal=True)
        assert prompt_tokens == causal["input_ids"].shape[1]
        # vLLM's CPU attention = transformers with causal attention over image tokens ...
        assert max_difference(vllm, hf_next_logprobs(hf[model], causal)) <= TEXT_TOLERANCE
        # ... and transformers' own bidirectional image attention is within the bound.
        full = hf_inputs(hf["processor"], images, messages, causal=False)
        assert max_difference(vllm, hf_next_logprobs(hf[model], full)) <= IMAGE_TOLERANCE


# --------------------------------------------------------------------------- croptune against it


def greedy_gaps(
    client, hf, model: str, images: list, messages: list[dict], answer: str, max_tokens: int
) -> dict[str, float]:
    """How far vLLM's answer is from transformers' greedy answer, token by token.

    Asks vLLM the question croptune asked (the same messages), checks the text is the one
    croptune stored, then scores vLLM's answer tokens under transformers: at each step the
    logprob of transformers' best token minus that of vLLM's token (0 = the same greedy
    choice). Returns the largest such gap with causal and with bidirectional image attention.
    """
    import torch

    from teacher_labeling.endpoint import EndpointBackend, EndpointConfig

    backend = EndpointBackend(EndpointConfig(model=model, base_url="http://unused/v1"))
    request = backend.request(list(images), messages)
    reply = client.chat.completions.create(
        model=model,
        messages=backend.messages(request, messages),
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
        extra_body={"return_tokens_as_token_ids": True},
    )
    assert reply.choices[0].message.content.strip() == answer.strip()
    tokens = [int(t.token.split(":")[1]) for t in reply.choices[0].logprobs.content]
    gaps = {}
    for causal in (True, False):
        inputs = hf_inputs(hf["processor"], list(images), messages, causal)
        prompt = inputs["input_ids"].shape[1]
        answer_ids = torch.tensor([tokens])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], answer_ids], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "token_type_ids" in inputs:
            extra = torch.zeros_like(answer_ids)
            inputs["token_type_ids"] = torch.cat([inputs["token_type_ids"], extra], 1)
        with torch.no_grad():
            logits = hf[model](**inputs).logits[0, prompt - 1 : -1].float()
        logprobs = torch.log_softmax(logits, -1)
        chosen = logprobs.gather(1, answer_ids.T).squeeze(1)
        gaps["causal" if causal else "bidirectional"] = float(
            (logprobs.max(1).values - chosen).max()
        )
    return gaps


def endpoint_yaml(folder: Path, server) -> Path:
    """An endpoint config naming the served LoRA (what `croptune evaluate --model` takes)."""
    path = folder / "endpoint.yaml"
    path.write_text(
        yaml.safe_dump({"name": "vllm-student", "base_url": server.base_url, "model": LORA_NAME})
    )
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The croptune command line, as a user runs it."""
    return subprocess.run(
        [CROPTUNE, "--no-progress", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


def predict(demo, out: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`croptune predict` of the demo catalog with the demo bundle."""
    catalog = demo.workdir / "catalog" / "catalog.jsonl"
    return run(
        "predict", "--bundle", str(demo.bundle), str(catalog), "--out", str(out), *args, cwd=cwd
    )


def test_evaluate_against_vllm_gives_the_in_process_answers(demo, server, client, hf, tmp_path):
    from finetune.evaluate import load_split

    out = tmp_path / "eval"
    result = run(
        "evaluate",
        "--model",
        str(endpoint_yaml(tmp_path, server)),
        "--model",
        str(demo.adapter),
        "--dataset",
        str(demo.workdir / "dataset"),
        "--max-new-tokens",
        "128",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    served = {a["item_id"]: a["answer"] for a in answers if a["model"] == "vllm-student"}
    in_process = {a["item_id"]: a["answer"] for a in answers if a["model"] != "vllm-student"}
    rows = load_split(demo.workdir / "dataset", "test")
    assert set(served) == set(in_process) == set(rows["item_id"])
    for row in rows:
        gaps = greedy_gaps(
            client, hf, LORA_NAME, row["images"], row["prompt"], served[row["item_id"]], 128
        )
        assert gaps["causal"] <= TEXT_TOLERANCE, (row["item_id"], gaps)
        assert gaps["bidirectional"] <= IMAGE_TOLERANCE, (row["item_id"], gaps)


def test_predict_against_vllm_gives_the_in_process_answers(demo, server, client, hf, tmp_path):
    from finetune.predict import PREDICTOR, load_bundle
    from toolkit.store import RunStore

    served = predict(
        demo,
        tmp_path / "served.jsonl",
        "--endpoint",
        server.base_url,
        "--limit",
        "3",
        "--max-new-tokens",
        "96",
        cwd=tmp_path,
    )
    local = predict(
        demo, tmp_path / "local.jsonl", "--limit", "3", "--max-new-tokens", "96", cwd=tmp_path
    )
    # Exit 1 means some items failed (the toy student's answers rarely parse), not a crash.
    for result in (served, local):
        assert result.returncode in (0, 1), result.stderr
        assert "Traceback" not in result.stderr
    records = [json.loads(x) for x in (tmp_path / "served.jsonl").read_text().splitlines()]
    local_ids = [
        json.loads(x)["item_id"] for x in (tmp_path / "local.jsonl").read_text().splitlines()
    ]
    assert [r["item_id"] for r in records] == local_ids and len(records) == 3
    # Each answer as predict stored it, with the example predict built for it.
    bundle = load_bundle(demo.bundle)
    # An answer that did not parse is in its error record; a parsed one in the work store.
    answers = {r["item_id"]: r["answer"] for r in records if "answer" in r}
    with RunStore(tmp_path / "served.work", create=False) as store:
        query = "SELECT item_id, response FROM requests WHERE teacher=? AND status='ok'"
        answers.update(
            {row["item_id"]: row["response"] for row in store._query(query, (PREDICTOR,))}
        )
        from finetune.predict import NoBoxes, Predictor

        predictor = Predictor(bundle, store, backend=_NamedBackend(), box_source=NoBoxes())
        for item in store.items():
            if item.item_id not in answers:
                continue
            images, messages = predictor.prepare_item(item).example
            gaps = greedy_gaps(client, hf, LORA_NAME, images, messages, answers[item.item_id], 96)
            assert gaps["causal"] <= TEXT_TOLERANCE, (item.item_id, gaps)
            assert gaps["bidirectional"] <= IMAGE_TOLERANCE, (item.item_id, gaps)
    assert len(answers) == 3


# vLLM's own image loader, in its environment: each data URL -> the pixel hash it decodes to.
_VLLM_DECODE = """
import base64, hashlib, json, sys
from vllm.multimodal.media.image import ImageMediaIO
for url in json.load(open(sys.argv[1])):
    image = ImageMediaIO().load_bytes(base64.b64decode(url.split(",", 1)[1])).media
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    print(digest.hexdigest())
"""


def test_vllm_decodes_what_predict_sends_to_the_training_pixels(vllm_sandbox, tmp_path):
    """An unchanged photo goes as its own file, what croptune made as PNG: vLLM decodes both
    to exactly the pixels the student was trained on (Pillow and libjpeg of two venvs)."""
    from teacher_labeling.client import EncodedImages
    from teacher_labeling.endpoint import EndpointConfig
    from tests.vllm_server import vllm_executable
    from toolkit.dataset.rows import fit_image
    from toolkit.dataset.stored import source_file
    from toolkit.images import decode_image, mark_source, pixel_hash

    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    files = {}
    for name, save in {
        "upright.jpg": lambda f: noise.save(f, quality=90),  # sent as itself
        "upright.webp": lambda f: noise.save(f, quality=80),  # sent as itself
        "turned.jpg": lambda f: noise.transpose(Image.Transpose.ROTATE_90).save(
            f, quality=90, exif=_orientation(6)
        ),  # turned upright by croptune: PNG
        "big.jpg": lambda f: noise.resize((1200, 900)).save(f, quality=90),  # downscaled: PNG
    }.items():
        save(tmp_path / name)
        files[name] = (tmp_path / name).read_bytes()
    config = EndpointConfig(name="s", model="s", base_url="http://127.0.0.1:9/v1")
    encoded, urls, want = EncodedImages(), [], []
    for data in files.values():
        image = decode_image(data)
        source = source_file(data, pixel_hash(image))
        fitted = fit_image(mark_source(image, source) if source else image, 1024)
        urls.append(encoded.data_url(fitted, pixel_hash(fitted), config))
        want.append(pixel_hash(fitted))
    assert [url[:15] for url in urls] == [
        "data:image/jpeg", "data:image/webp", "data:image/png;", "data:image/png;"
    ]  # fmt: skip
    (tmp_path / "urls.json").write_text(json.dumps(urls))
    python = Path(str(vllm_executable())).with_name("python")
    got = subprocess.run(
        [str(python), "-c", _VLLM_DECODE, str(tmp_path / "urls.json")],
        capture_output=True, text=True, check=True, cwd=vllm_sandbox,
    ).stdout.split()  # fmt: skip
    assert got == want


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_predict_for_a_model_the_server_does_not_serve_fails_at_once(demo, server, tmp_path):
    """An adapter vLLM refused (or a typo) is not served: one message with the URL, exit 1."""
    result = predict(
        demo, tmp_path / "p.jsonl", "--endpoint", server.base_url, "--model", "nope", cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"{server.base_url} does not serve model 'nope'; it serves" in result.stderr
    assert "'croptune-tiny'" in result.stderr and "Traceback" not in result.stderr


class _NamedBackend:
    """Enough of a backend for Predictor to build examples (it never answers here)."""

    kind = "endpoint"
    name = "unused"

    def identity(self) -> dict:
        return {"kind": self.kind, "name": self.name}


# --------------------------------------------------------------------------- several adapters


def runtime_load(server, name: str, path: Path) -> tuple[int, str]:
    """POST /v1/load_lora_adapter (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
    return server.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})


def runtime_unload(server, name: str) -> tuple[int, str]:
    """POST /v1/unload_lora_adapter."""
    return server.post("/v1/unload_lora_adapter", {"lora_name": name})


@pytest.fixture(scope="module")
def make_adapter(demo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """adapter(name, **LoraConfig kwargs): a random (non-zero) LoRA on the bundle's base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    folder = tmp_path_factory.mktemp("adapters")

    def build(name: str, **changes: Any) -> Path:
        import torch

        settings = {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": LORA_TARGETS["gemma3"]["language"].modules,
            "init_lora_weights": False,
            **changes,
        }
        torch.manual_seed(0)
        base = AutoModelForImageTextToText.from_pretrained(
            str(demo.bundle / "base"), dtype=torch.float32
        )
        get_peft_model(base, LoraConfig(**settings)).save_pretrained(str(folder / name))
        return folder / name

    return build


def peft_model(demo, adapter: Path) -> Any:
    """transformers + peft on the bundle's base with this adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(
        str(demo.bundle / "base"), dtype=torch.float32
    )
    return PeftModel.from_pretrained(base, str(adapter)).eval()


def test_two_adapters_at_once_and_one_loaded_and_unloaded_at_run_time(
    demo, server, client, hf, make_adapter
):
    second = make_adapter("second", r=16 // 2, lora_alpha=32)
    status, body = runtime_load(server, "second", second)
    assert status == 200, body
    try:
        assert {m.id for m in client.models.list()} == {BASE_NAME, LORA_NAME, "second"}
        text = "Read the printed text."
        inputs = hf_inputs(hf["processor"], [], placeholder_messages(0, text), causal=False)
        expected = {LORA_NAME: hf[LORA_NAME], "second": peft_model(demo, second)}
        for _ in range(2):  # interleaved: each request gets its own adapter
            for name, model in expected.items():
                vllm, _ = first_token_logprobs(client, name, sent_messages([], text))
                assert max_difference(vllm, hf_next_logprobs(model, inputs)) <= TEXT_TOLERANCE
    finally:
        status, body = runtime_unload(server, "second")
    assert status == 200, body
    assert {m.id for m in client.models.list()} == {BASE_NAME, LORA_NAME}
    import openai

    with pytest.raises(openai.NotFoundError, match="second"):
        first_token_logprobs(client, "second", sent_messages([], "hi"))


# --------------------------------------------------------------------------- the lint, in vLLM


# The regex croptune's `adapt: language+vision` uses for SigLIP's layers.
VISION = LORA_TARGETS["gemma3"]["vision"].modules


@pytest.mark.parametrize(
    ("case", "changes", "rule", "vllm_says"),
    [
        # rank 4 under the card's --max-lora-rank 8: vLLM serves it as peft computes it
        ("rank-4", {"r": 4}, None, None),
        # per-module ranks and alphas: vLLM reads them from the tensors and the config
        ("patterns", {"rank_pattern": {"q_proj": 4}, "alpha_pattern": {"v_proj": 64}}, None, None),
        # a rank above the server's --max-lora-rank: refused, the server goes on
        ("rank-16", {"r": 16}, None, "LoRA rank 16 is greater than max_lora_rank 8"),
        # a trained lm_head copy
        (
            "modules-to-save",
            {"modules_to_save": ["lm_head"]},
            "modules-to-save",
            "vLLM only supports modules_to_save being either None or",
        ),
        # DoRA magnitudes
        ("dora", {"use_dora": True}, "dora", "vLLM does not yet support DoRA."),
        # trained biases of the base layers
        ("bias", {"bias": "all"}, "bias", "Adapter bias is not supported."),
        # LoRA bias vectors
        ("lora-bias", {"lora_bias": True}, "lora-bias", "vLLM does not support LoRA bias"),
        # an init that rewrites the base weights
        (
            "pissa",
            {"init_lora_weights": "pissa"},
            "init",
            "vLLM does not support init_lora_weights='pissa'",
        ),
        # Gemma 3's projector, a bare parameter
        (
            "projector",
            {"target_parameters": ["model.multi_modal_projector.mm_input_projection_weight"]},
            "target-parameters",
            "expected target modules in",
        ),
        # the vision tower: loaded, and ignored without a word
        ("vision", {"target_modules": VISION}, "vision-target", None),
    ],
)
def test_lint_says_what_vllm_does(
    demo, server, client, hf, make_adapter, case, changes, rule, vllm_says
):
    from finetune.export.lint import lint_adapter, max_lora_rank

    adapter = make_adapter(case, **changes)
    problems = lint_adapter(adapter)
    status, body = runtime_load(server, case, adapter)
    try:
        if vllm_says is not None:  # vLLM refuses the adapter and keeps serving
            assert status >= 400 and vllm_says in body, (status, body)
            assert server.alive() and server.ready()
            if rule is not None:
                (problem,) = [p for p in problems if p.rule == rule]
                assert problem.level == "error"
                # The lint quotes vLLM's own words.
                assert vllm_says.split("'")[0].rstrip(" .=") in problem.message, problem.message
            else:  # servable: the card's --max-lora-rank is the adapter's, which vLLM takes
                assert [p for p in problems if p.level == "error"] == []
                assert max_lora_rank(changes["r"]) == changes["r"]
            return
        assert status == 200, body
        text = "Read the printed text."
        student = peft_model(demo, adapter)
        if rule is None:  # served as peft computes it
            assert problems == []
            inputs = hf_inputs(hf["processor"], [], placeholder_messages(0, text), causal=False)
            vllm, _ = first_token_logprobs(client, case, sent_messages([], text))
            assert max_difference(vllm, hf_next_logprobs(student, inputs)) <= TEXT_TOLERANCE
            return
        # Vision LoRA: vLLM answers an image prompt exactly as the BASE model does.
        (problem,) = [p for p in problems if p.rule == rule]
        assert problem.level == "warning" and "ignores the LoRA weights" in problem.message
        assert "--merge" in problem.fix
        image = Image.open(catalog_photos(demo, 1)[0]).convert("RGB")
        inputs = hf_inputs(hf["processor"], [image], placeholder_messages(1, text), causal=True)
        vllm, _ = first_token_logprobs(client, case, sent_messages([image], text))
        assert max_difference(vllm, hf_next_logprobs(hf[BASE_NAME], inputs)) <= TEXT_TOLERANCE
        assert max_difference(vllm, hf_next_logprobs(student, inputs)) > 100 * TEXT_TOLERANCE
    finally:
        if status == 200:
            runtime_unload(server, case)


# --------------------------------------------------------------------------- vision LoRA


@pytest.fixture(scope="module")
def vision_bundle(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student whose LoRA also trained the vision tower, exported with --merge."""
    from finetune.train import TrainConfig, save_train_config, train

    out = tmp_path_factory.mktemp("vision")
    config = TrainConfig(
        student="tiny",
        dataset=str(demo.workdir / "dataset"),
        output_dir=str(out / "train"),
        adapt="language+vision",
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=2e-2,  # large: the vision LoRA must visibly move the logprobs
        warmup_ratio=0.0,
        logging_steps=3,
        eval_steps=6,
        gradient_checkpointing=False,
    )
    (out / "train").mkdir()
    save_train_config(config, out / "train" / "train_config.yaml")
    adapter = train(config).adapter_dir
    result = run(
        "export", "--adapter", str(adapter), "--out", str(out / "bundle"), "--merge", cwd=out
    )
    assert result.returncode == 0, result.stderr
    return out / "bundle"


def test_card_of_a_vision_adapter_points_to_merged_not_to_a_crashing_flag(vision_bundle):
    card = (vision_bundle / "README.md").read_text()
    assert "--enable-tower-connector-lora" not in card_block(card, "## Serve with vLLM")
    assert "ignores LoRA weights there without a word" in card
    assert "Serve `merged/` below" in card
    manifest = yaml.safe_load((vision_bundle / "croptune.yaml").read_text())
    assert {p["rule"] for p in manifest["lint"]["problems"]} == {"vision-target", "vision-weights"}


def test_merged_export_is_served_directly_with_its_vision_weights(
    demo, vision_bundle, vllm_sandbox
):
    import openai
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    card = (vision_bundle / "README.md").read_text()
    argv = split_command(card_block(card, "Or serve the merged model"))
    assert argv[:3] == ["vllm", "serve", "./merged"] and "--enable-lora" not in argv
    image = Image.open(catalog_photos(demo, 1)[0]).convert("RGB")
    text = "Read the printed text."
    processor = AutoProcessor.from_pretrained(str(vision_bundle / "merged"))
    inputs = hf_inputs(processor, [image], placeholder_messages(1, text), causal=True)

    def load(folder: Path) -> Any:
        return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()

    merged = hf_next_logprobs(load(vision_bundle / "merged"), inputs)
    student = hf_next_logprobs(peft_model(demo, vision_bundle / "adapter"), inputs)
    base = hf_next_logprobs(load(demo.bundle / "base"), inputs)
    with VLLMServer(argv[1:], cwd=vision_bundle, log=vllm_sandbox / "merged.log") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        assert [m.id for m in client.models.list()] == [LORA_NAME]
        vllm, _ = first_token_logprobs(client, LORA_NAME, sent_messages([image], text))
    assert max_difference(vllm, merged) <= TEXT_TOLERANCE
    assert max_difference(vllm, student) <= TEXT_TOLERANCE  # the merge is the adapter, vision too
    assert max_difference(vllm, base) > 100 * TEXT_TOLERANCE  # and the vision LoRA matters


def test_tower_connector_lora_still_crashes_vllm_on_gemma3(demo, vision_bundle, vllm_sandbox):
    """Why the card never recommends --enable-tower-connector-lora for Gemma 3 (vLLM 0.32).

    If this fails, vLLM learned to serve it: revise _FIX_LANGUAGE_ONLY and the card.
    """
    import openai

    card = (vision_bundle / "README.md").read_text()
    argv = split_command(card_block(card, "## Serve with vLLM"))
    argv += ["--enable-tower-connector-lora", "--enforce-eager"]  # eager: a faster start
    image = Image.open(catalog_photos(demo, 1)[0]).convert("RGB")
    with VLLMServer(argv[1:], cwd=vision_bundle, log=vllm_sandbox / "tower.log") as server:
        client = openai.OpenAI(
            base_url=server.base_url, api_key="EMPTY", timeout=120, max_retries=0
        )
        with pytest.raises(openai.OpenAIError):
            first_token_logprobs(client, LORA_NAME, sent_messages([image], "Read it."))
        deadline = time.monotonic() + 60
        while server.alive() and time.monotonic() < deadline:  # the engine dies, then the API
            time.sleep(1)
        alive = server.alive()
        log = server.log.read_text(errors="replace")
    assert "einsum(): subscript b has size" in log, log[-3000:]
    assert not alive, "vLLM kept running after the tower-connector LoRA error"
