"""Attribute schemas: the groups and fields a teacher labels and a student predicts."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from toolkit.errors import CroptuneError

FieldType = Literal["string", "list"]

ATTRIBUTES_INSTRUCTIONS = """You are given all photos of one product listing from an online marketplace.
Extract the product information that is VISIBLE on the photos (printed on the product, its
packaging or its labels) or stated in the listing text. Do not guess and do not invent values:
leave a field out when it is not visible. Copy identifiers exactly as printed (barcode digits
only). Answer with ONE JSON object with these groups and fields (all optional):
{schema}"""


class FieldSpec(BaseModel):
    """One attribute field: its type and what it means."""

    type: FieldType = Field("string", description="'string' for one value, 'list' for a set")
    description: str = Field("", description="What the field holds; sent to teachers")
    compare: Literal["text", "code", "digits"] = Field(
        "text",
        description="How values are compared when scoring (toolkit.metrics): text: case, spaces "
        "and units; code: case and spaces only (model/serial numbers); digits: digits only (barcodes)",
    )


class AttributeSchema(BaseModel):
    """A named set of attribute groups, each a mapping of field name to spec."""

    name: str
    description: str = ""
    groups: dict[str, dict[str, FieldSpec]]

    def field_names(self) -> list[tuple[str, str]]:
        """All (group, field) pairs in schema order."""
        return [(g, f) for g, fields in self.groups.items() for f in fields]

    def json_schema(self, strict: bool = False) -> dict[str, Any]:
        """A JSON Schema of the answer object, no extra keys.

        strict: the form OpenAI's strict structured outputs need: every key required,
        absent values as null (croptune drops the nulls when it cleans the answer).
        """
        props: dict[str, Any] = {}
        for group, fields in self.groups.items():
            gprops = {}
            for name, spec in fields.items():
                if spec.type == "list":
                    kind: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
                else:
                    kind = {"type": "string"}
                if strict:
                    kind["type"] = [kind["type"], "null"]
                gprops[name] = (
                    {**kind, "description": spec.description} if spec.description else kind
                )
            props[group] = {"type": "object", "properties": gprops, "additionalProperties": False}
            if strict:
                props[group]["required"] = list(gprops)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "additionalProperties": False,
        }
        if strict:
            schema["required"] = list(props)
        return schema

    def clean(self, answer: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Schema-shaped copy of an answer and a list of what was dropped or coerced."""
        cleaned, notes = self._clean(answer)
        return cleaned, [note for _, note in notes]

    def check(self, answer: dict[str, Any]) -> tuple[list[str], list[str]]:
        """What clean would do to an answer: (fields it moves into their group, what it drops)."""
        _, notes = self._clean(answer)
        return [n for kind, n in notes if kind == "moved"], [
            n for kind, n in notes if kind == "dropped"
        ]

    def _clean(self, answer: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """clean's work, each note tagged "moved" (kept, in its group) or "dropped"."""
        cleaned: dict[str, Any] = {}
        if not isinstance(answer, dict):
            return {}, [("dropped", f"answer is a {type(answer).__name__}, not an object")]
        answer, notes = self._grouped(answer)
        for group, values in answer.items():
            if group not in self.groups:
                notes.append(
                    (
                        "dropped",
                        f"unknown group {group!r} dropped"
                        if isinstance(values, dict)
                        else f"unknown field {group!r} dropped (no group has it)",
                    )
                )
                continue
            if not isinstance(values, dict):
                notes.append(("dropped", f"group {group!r} is not an object; dropped"))
                continue
            out: dict[str, Any] = {}
            for name, value in values.items():
                spec = self.groups[group].get(name)
                if spec is None:
                    notes.append(("dropped", f"unknown field {group}.{name} dropped"))
                    continue
                value = _coerce(value, spec.type)
                if value in (None, "", []):
                    continue
                out[name] = value
            if out:
                cleaned[group] = out
        return cleaned, notes

    def _grouped(self, answer: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """Top-level field names (a flat answer) moved into the one group that has them."""
        owners: dict[str, list[str]] = {}
        for group, fields in self.groups.items():
            for name in fields:
                owners.setdefault(name, []).append(group)
        flat = {k: v for k, v in answer.items() if k not in self.groups and k in owners}
        grouped = {  # copies: the caller's answer stays as it was
            k: dict(v) if isinstance(v, dict) else v for k, v in answer.items() if k not in flat
        }
        notes: list[tuple[str, str]] = []
        for key, value in flat.items():
            groups = owners[key]
            if len(groups) > 1:
                notes.append(
                    (
                        "dropped",
                        f"field {key!r} at the top level fits groups {', '.join(groups)}; dropped",
                    )
                )
                continue
            target = grouped.get(groups[0])
            if target is None:
                target = grouped[groups[0]] = {}
            if not isinstance(target, dict) or key in target:
                notes.append(
                    (
                        "dropped",
                        f"field {key!r} at the top level: group {groups[0]!r} already has it; "
                        "dropped",
                    )
                )
                continue
            target[key] = value
            notes.append(
                ("moved", f"field {key!r} given at the top level: placed in group {groups[0]!r}")
            )
        return grouped, notes

    def describe(self) -> str:
        """The schema as compact JSON text, for prompts."""
        return json.dumps(
            {
                g: {
                    f: ("list of strings" if s.type == "list" else "string")
                    for f, s in fields.items()
                }
                for g, fields in self.groups.items()
            },
            separators=(",", ":"),
        )


def _coerce(value: Any, kind: FieldType) -> Any:
    if value is None:
        return None
    if kind == "list":
        items = value if isinstance(value, list) else [value]
        return [str(v).strip() for v in items if v is not None and str(v).strip()]
    if isinstance(value, list):
        return ", ".join(str(v).strip() for v in value if v is not None)
    return str(value).strip()


def load_schema(name_or_path: str | Path = "compliance") -> AttributeSchema:
    """A built-in schema by name, or one read from a YAML/JSON file."""
    path = Path(name_or_path)
    if path.suffix.lower() in {".yaml", ".yml", ".json"}:
        if not path.is_file():
            raise CroptuneError(f"schema file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        origin = str(path)
    else:
        res = resources.files("toolkit") / "schemas" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise CroptuneError(
                f"unknown built-in schema {name_or_path!r}; give 'compliance' or a path to a YAML/JSON file"
            )
        text = res.read_text(encoding="utf-8")
        origin = f"built-in {name_or_path}"
    try:
        data = yaml.safe_load(text)
        return AttributeSchema.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise CroptuneError(f"schema {origin} is not valid: {exc}") from exc


def listing_text(title: str | None, text: str | None) -> str | None:
    """The listing's own words (title and description) as one block, or None."""
    parts = [p.strip() for p in (title, text) if p and p.strip()]
    return "\n".join(parts) or None


def extraction_prompt(schema: AttributeSchema, listing: str | None = None) -> str:
    """The attribute-extraction instruction shared by teachers and the student."""
    prompt = ATTRIBUTES_INSTRUCTIONS.format(schema=schema.describe())
    if listing:
        prompt += f"\n\nListing text:\n{listing}"
    return prompt
