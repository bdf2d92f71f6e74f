"""Every `--flag` croptune tells a user to pass exists on the command it is named with.

Messages in the packages and commands in the docs are scanned; the flags of other tools that
croptune's text names (vLLM's serve flags, accelerate's, pip's, pytest's) are listed below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
# Flags of other programs that croptune's messages and docs name.
OTHER_TOOLS = {
    # vllm serve
    "--enable-lora", "--lora-modules", "--max-lora-rank", "--max-loras", "--max-cpu-loras",
    "--limit-mm-per-prompt", "--chat-template", "--max-model-len", "--dtype",
    "--served-model-name", "--mm-processor-kwargs", "--enable-tower-connector-lora",
    "--enforce-eager", "--kv-cache-memory-bytes", "--port", "--host", "--api-key",
    "--tensor-parallel-size", "--gpu-memory-utilization",
    # accelerate launch
    "--config_file", "--num_processes",
    # pip
    "--index-url", "--no-deps", "--upgrade",
    # a placeholder: `key=value (or --key=value) overrides`
    "--key",
    # headless chromium
    "--headless", "--no-sandbox", "--disable-gpu", "--screenshot", "--window-size",
    "--user-data-dir", "--disable-background-networking", "--disable-component-update",
    "--disable-sync",
}  # fmt: skip


def _commands() -> dict[str, set[str]]:
    """'label' / 'dataset build' -> its long options (plus the global ones on every command)."""
    import typer

    from croptune.cli import app

    root = typer.main.get_command(app)

    def options(command) -> set[str]:
        return {
            o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")
        }

    found: dict[str, set[str]] = {}

    def walk(command, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            found[" ".join(path)] = options(command) | options(root)

    walk(root, ())
    return found


COMMANDS = _commands()
EVERY_FLAG = set().union(*COMMANDS.values())


def _doc_command_lines() -> list[tuple[str, str, str]]:
    """(file:line, subcommand, text) for each `croptune ...` command written in the docs."""
    lines = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), 1):
            for match in re.finditer(r"croptune ((?:[a-z]+ ){0,2})", line):
                words = match.group(1).split()
                for size in (2, 1):
                    name = " ".join(words[:size])
                    if name in COMMANDS:
                        lines.append((f"{path.name}:{number}", name, line[match.start() :]))
                        break
    return lines


@pytest.mark.parametrize(("where", "command", "text"), _doc_command_lines())
def test_documented_commands_use_flags_they_have(where, command, text):
    # Only up to the next command on the line (a table row can hold several).
    own = re.split(r"`|\|| croptune |\$\(", text)[0]
    unknown = {f for f in FLAG.findall(own) if f not in COMMANDS[command] and f not in OTHER_TOOLS}
    assert not unknown, f"{where}: `croptune {command}` has no {sorted(unknown)}"


def _message_flags() -> list[tuple[str, str]]:
    """(file:line, flag) for every --flag inside a string of the packages' code."""
    found = []
    for package in ("toolkit", "teacher_labeling", "finetune"):
        for path in sorted((REPO / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for string in re.findall(r"\"[^\"]*\"|'[^']*'", line):
                    for flag in FLAG.findall(string):
                        found.append((f"{path.relative_to(REPO)}:{number}", flag))
    return found


@pytest.mark.parametrize(("where", "flag"), _message_flags())
def test_flags_named_in_messages_exist(where, flag):
    assert flag in EVERY_FLAG or flag in OTHER_TOOLS, f"{where} names {flag}, which no command has"


def test_the_scan_finds_what_it_checks():
    """The scans are not empty (a broken regex would pass everything)."""
    assert len(_doc_command_lines()) > 30
    flags = {flag for _, flag in _message_flags()}
    assert {"--allow-outside-paths", "--resume"} <= flags


def test_every_command_that_reads_a_catalog_takes_the_flag_its_path_message_names():
    """toolkit.catalog refuses escaping paths with 'pass --allow-outside-paths'."""
    for command in ("label", "catalog validate", "predict"):
        assert "--allow-outside-paths" in COMMANDS[command], command


def test_label_accepts_an_image_outside_the_catalog_folder_with_the_flag(tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    outside = tmp_path / "shared" / "photo.png"
    outside.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(outside)
    folder = tmp_path / "catalog"
    folder.mkdir()
    item = {
        "item_id": "A",
        "images": ["../shared/photo.png"],
        "attributes": {"attributes": {"brand": "Acme"}},
    }
    (folder / "catalog.jsonl").write_text(json.dumps(item) + "\n")
    croptune = str(Path(sys.executable).parent / "croptune")
    config = REPO / "toolkit" / "configs" / "label-reference.yaml"
    args = [
        croptune,
        "--no-progress",
        "label",
        str(folder / "catalog.jsonl"),
        "--config",
        str(config),
    ]
    refused = subprocess.run([*args, "--run", str(tmp_path / "r1")], capture_output=True, text=True)
    assert "pass --allow-outside-paths" in refused.stderr
    accepted = subprocess.run([*args, "--run", str(tmp_path / "r2"), "--allow-outside-paths"],
                              capture_output=True, text=True)  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert "leaves the catalog folder" not in accepted.stderr
