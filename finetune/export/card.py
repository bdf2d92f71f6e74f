"""The bundle's model card (README.md) and the `vllm serve` commands that serve it as
trained."""

from __future__ import annotations

import json
from typing import Any

from finetune.export.lint import VLLM_CHECKED
from finetune.train.config import VLLM_MAX_LORA_RANKS
from toolkit.bundle import MERGED_DIR, BundleManifest, TrainingFacts
from toolkit.config import dump_yaml
from toolkit.dataset import DatasetConfig
from toolkit.errors import CroptuneError

# The server's image limit when the bundle records no image budget: the dataset's default.
_DEFAULT_IMAGE_BUDGET = DatasetConfig.model_fields["max_images_per_item"].default
_DEFAULT_IMAGE_TOKENS = 256  # Gemma 3's, when the bundle records none


def _base(manifest: BundleManifest) -> str:
    if not manifest.base_model:
        raise CroptuneError("the manifest names no base_model; export sets one")
    return manifest.base_model


def serve_command(manifest: BundleManifest) -> str:
    """The `vllm serve` command for the bundle, run from the bundle folder."""
    base = _base(manifest)
    if manifest.base_folder:  # the bundle's copy, under the base's own name
        base = f"./{manifest.base_folder} --served-model-name {base}"
    rank = manifest.lora.max_lora_rank if manifest.lora else VLLM_MAX_LORA_RANKS[1]
    lines = [
        f"vllm serve {base}",
        "--enable-lora",
        f"--lora-modules {manifest.lora_name}=./{manifest.adapter}",
        f"--max-lora-rank {rank}",
    ]
    template = manifest.prompt.chat_template
    if template:
        lines.append(f"--chat-template ./{template}")
    # No --enable-tower-connector-lora for vision/projector adapters: it crashes vLLM's engine
    # on Gemma 3 (see lint's _FIX_LANGUAGE_ONLY); the card points to merged/ instead.
    return " \\\n    ".join(lines + _model_flags(manifest))


def merged_serve_command(manifest: BundleManifest) -> str:
    """The `vllm serve` command for the bundle's merged/ model, run from the bundle folder."""
    lines = [
        f"vllm serve ./{manifest.merged or MERGED_DIR}",
        f"--served-model-name {manifest.lora_name}",
    ]
    return " \\\n    ".join(lines + _model_flags(manifest))


def _image_budget(manifest: BundleManifest) -> int:
    return manifest.image_budget or _DEFAULT_IMAGE_BUDGET


def _model_flags(manifest: BundleManifest) -> list[str]:
    """The flags that make vLLM see inputs as training did: images, length, dtype, processor."""
    flags = [
        f"--limit-mm-per-prompt '{json.dumps({'image': _image_budget(manifest)})}'",
        f"--max-model-len {_max_model_len(manifest)}",
    ]
    if manifest.dtype:
        flags.append(f"--dtype {manifest.dtype}")
    if manifest.mm_processor_kwargs:
        flags.append(f"--mm-processor-kwargs '{json.dumps(manifest.mm_processor_kwargs)}'")
    return flags


def _max_model_len(manifest: BundleManifest) -> int:
    """A context length that fits the image budget, the prompt and the answer."""
    per_image = manifest.image_tokens or _DEFAULT_IMAGE_TOKENS
    kwargs = manifest.mm_processor_kwargs
    if kwargs.get("do_pan_and_scan"):
        per_image *= 1 + int(kwargs.get("pan_and_scan_max_num_crops", 4))
    answer = manifest.prompt.decoding.max_new_tokens
    needed = _image_budget(manifest) * per_image + 1024 + answer
    length = 4096
    while length < needed:
        length *= 2
    return length


CLIENT_SNIPPET = '''\
import base64, io, json
from pathlib import Path

import yaml
from openai import OpenAI
from PIL import Image, ImageOps

MANIFEST = yaml.safe_load(Path("croptune.yaml").read_text())  # run from the bundle folder
PROMPT = MANIFEST["prompt"]
client = OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")


def data_url(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: the pixels the student was trained on
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def fit(image, side):
    if side and max(image.size) > side:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def load_original(path):
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return fit(image, PROMPT["originals_max_side"])


def extract(originals, crops=(), title=None, text=None):
    """originals: photo paths in catalog order; crops: PIL crops cut as in training."""
    images = [load_original(path) for path in originals]
    images += [fit(crop, PROMPT.get("crops_max_side")) for crop in crops]
    prompt = PROMPT["instructions"]
    listing = "\\n".join(part.strip() for part in (title, text) if part and part.strip())
    if listing:
        prompt += "\\n\\nListing text:\\n" + listing
    content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    content.append({"type": "text", "text": prompt.strip()})
    reply = client.chat.completions.create(
        model=MANIFEST["lora_name"],  # the LoRA name given to --lora-modules
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=PROMPT["decoding"]["max_new_tokens"],
    )
    return json.loads(reply.choices[0].message.content)


if __name__ == "__main__":
    print(extract(["photo_0.jpg", "photo_1.jpg"], title="Acme kettle 1.7 l"))
'''


def _license_note(base: str) -> str:
    if base.startswith("croptune:"):
        return (
            f"`{base}` is a toy model croptune builds offline with random weights: it proves "
            "the plumbing and reads nothing. No hub has it, so the bundle carries it in "
            "`base/`, which the command below serves."
        )
    if base.lower().startswith("google/gemma"):
        return (
            f"This adapter is a derivative of `{base}` and is subject to the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms) and its prohibited use policy."
        )
    return (
        f"This adapter is a derivative of `{base}`; the base model's licence (see its model "
        "card) applies to it and to the merged model."
    )


def _metrics_table(evaluations: list[dict[str, Any]]) -> list[str]:
    if not evaluations:
        return [
            "Not evaluated: run `croptune evaluate --model ADAPTER --dataset DIR` before "
            "exporting, or pass `--metrics metrics.json`."
        ]
    lines = [
        "| model | split | examples | JSON valid | precision | recall | F1 | s/example |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in evaluations:
        micro = entry.get("micro") or {}
        lines.append(
            f"| {entry.get('model')} | {entry.get('split', '')} | {entry.get('examples', '')} | "
            f"{_fmt(entry.get('json_valid_rate'), 2)} | {_fmt(micro.get('precision'))} | "
            f"{_fmt(micro.get('recall'))} | {_fmt(micro.get('f1'))} | "
            f"{_fmt(entry.get('seconds_per_example'), 2)} |"
        )
    lines += ["", "Field-level micro precision/recall/F1 over (group, field, value) units."]
    return lines


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def model_card(manifest: BundleManifest) -> str:
    """The bundle's README: what it is, its data and scores, how to serve and call it."""
    base = _base(manifest)
    name = manifest.lora_name
    lora = manifest.lora
    dataset = manifest.dataset
    stats = dataset.stats or {}
    per_example = stats.get("images_per_example") or {}
    schema = manifest.schema_
    training = manifest.training or TrainingFacts()
    lint = manifest.lint
    front = {
        "base_model": base,
        "library_name": "peft",
        "pipeline_tag": "image-text-to-text",
        "tags": ["croptune", "lora", "vision-language", "product-attributes"],
    }
    if base.lower().startswith("google/gemma"):
        front["license"] = "gemma"
    splits = dataset.splits or stats.get("examples") or {}
    groups = schema.groups if schema else {}
    lines = [
        "---",
        dump_yaml(front).strip(),
        "---",
        "",
        f"# {name}: croptune student (LoRA on {base})",
        "",
        "Reads all photos of one product listing (the originals plus targeted crops of their "
        "printed text) and answers with ONE JSON object: identifiers, attributes, origin and "
        "regulatory information, only what is visible. Recipe: Nulli et al. (2026), "
        "*Adapting Vision-Language Models for E-commerce Understanding at Scale*.",
        "",
        "| file | what |",
        "|---|---|",
        "| `adapter/` | the PEFT LoRA adapter plus the training processor, tokenizer and chat "
        "template |",
        "| `croptune.yaml` | base model, prompt, schema, crop config, image budget, metrics, "
        "vLLM lint |",
    ]
    if manifest.detector:
        coverage = manifest.detector.coverage
        lines.append(
            "| `detector/` | the region-proposal detector (ultralytics) whose boxes the crops "
            "are cut from at inference"
            + (
                f" (its crops held {coverage:.0%} of the held-out teacher boxes)"
                if coverage is not None
                else " (coverage of teacher boxes not measured)"
            )
            + " |"
        )
    if manifest.merged:
        lines.append(
            "| `merged/` | the base with the adapter merged in (safetensors + processor) |"
        )
    if manifest.base_folder:
        lines.append(
            f"| `{manifest.base_folder}/` | the base model itself (no hub has it), "
            "loadable by vLLM and transformers |"
        )
    lines += [
        "",
        "## Base model and licence",
        "",
        f"- base: `{base}` (family {manifest.family or 'n/a'}, "
        f"{manifest.image_tokens or 'n/a'} image tokens per image)",
        f"- LoRA: rank {lora.r if lora else None}, alpha {lora.alpha if lora else None}, "
        f"adapted: {lora.adapt if lora else None}",
        f"- {_license_note(base)}",
        "",
        "## Training data",
        "",
        f"- examples per split: {', '.join(f'{k} {v}' for k, v in splits.items()) or 'n/a'}",
        f"- images per example (strategy {dataset.strategy or 'n/a'}, budget "
        f"{manifest.image_budget or 'n/a'}): median {per_example.get('median', 'n/a')}, "
        f"mean {per_example.get('mean', 'n/a')}, max {per_example.get('max', 'n/a')}",
        f"- crops: {manifest.crop.strategy if manifest.crop else 'none recorded'}",
        f"- schema `{schema.name if schema else 'n/a'}`: "
        + (", ".join(f"{g} ({len(f)} fields)" for g, f in groups.items()) or "n/a"),
        f"- training: {training.steps} steps, loss {_fmt(training.first_loss)} -> "
        f"{_fmt(training.last_loss)}, validation loss {_fmt(training.eval_loss)}",
        "",
        "## Metrics (held-out items)",
        "",
        *_metrics_table(manifest.evaluations or []),
        "",
        "## Serve with vLLM",
        "",
        "From this folder (`--max-lora-rank` is the adapter's rank, `--limit-mm-per-prompt` "
        "the image budget, `--chat-template` the template the student was trained with):",
        "",
        "```bash",
        serve_command(manifest),
        "```",
        "",
    ]
    adapt = lora.adapt if lora else "language"
    if adapt != "language":
        lines += [
            f"This adapter also trained the {adapt.removeprefix('language+')} part(s). vLLM "
            "loads the adapter but ignores LoRA weights there without a word, so the command "
            "above serves a model that sees images as the base does. "
            + (
                "Serve `merged/` below, which holds them as trained."
                if manifest.merged
                else "Export with `--merge` and serve `merged/`, which holds them as trained."
            )
            + f" (`--enable-tower-connector-lora` crashed vLLM {VLLM_CHECKED}'s engine at the "
            "first image request on Gemma 3.)",
            "",
        ]
    if manifest.merged:
        lines += [
            "Or serve the merged model, no LoRA machinery (the same model name):",
            "",
            "```bash",
            merged_serve_command(manifest),
            "```",
            "",
        ]
    lines += [
        "## Call it",
        "",
        "The model name is the LoRA name. Images go first, as data URLs, originals then crops, "
        "then the prompt of `croptune.yaml` (the exact training instructions):",
        "",
        "```python",
        CLIENT_SNIPPET.rstrip(),
        "```",
        "",
        "The crops must be cut the way training cut them (`croptune.yaml: crop`), from boxes "
        + (
            "proposed by `detector/`"
            if manifest.detector
            else "you bring (this bundle has no detector: give a box teacher's boxes, or send "
            "the originals only and lose the small print)"
        )
        + ". `croptune predict --bundle . CATALOG --out preds.jsonl` does boxes -> crops -> "
        "request in one command; croptune's `docs/serving.md` shows the crop functions.",
        "",
        "With transformers: `AutoProcessor.from_pretrained('adapter')` and "
        f"`PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained('{base}'), "
        "'adapter')`.",
        "",
        "## Intended use and limits",
        "",
        "- Drafting catalog attributes and compliance fields from listing photos for human "
        "review. Not a compliance decision: a mark the photos do not show is not there for "
        "the model, and a printed mark is not proof of certification.",
        "- It reads what is visible; small print needs the crops (trained with them, it does "
        "worse without).",
        "- Scores above are on held-out items of the training catalog; measure on yours.",
        "",
        "## vLLM lint",
        "",
        f"{'Servable' if lint is None or lint.vllm_servable else 'NOT servable'} by vLLM: "
        f"{lint.errors if lint else 0} error(s), {lint.warnings if lint else 0} warning(s).",
    ]
    lines += [f"- {p.level} [{p.rule}] {p.message}" for p in (lint.problems if lint else [])]
    return "\n".join(lines) + "\n"
