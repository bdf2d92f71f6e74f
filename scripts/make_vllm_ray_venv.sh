#!/usr/bin/env bash
# Builds VENV (default .venv-vllm-ray): the Python the Ray workers of the `vllm` engine test
# run on (RayConfig.python, Ray's runtime_env py_executable). It layers ray[data,serve]
# (the driver's Ray version; serve: vLLM's Ray metrics import it) over .venv-vllm's vLLM
# (CPU build) and puts this checkout on the path, so workers import croptune's stages.
# What it works around: Ray 2.60's ray.data.llm is written against vLLM 0.29 (its [llm]
# extra's pin) and imports vllm.entrypoints.chat_utils, which vLLM 0.32 (the CPU build
# here) moved to vllm.renderers.chat_utils, same functions: an import alias. On a cluster,
# install the vLLM version Ray pins instead (docs/scale.md).
set -euo pipefail
VENV=${1:-.venv-vllm-ray}
VLLM_VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
RAY=${RAY_PACKAGE:-ray[data,serve]==2.60.0}
if [ ! -x "$VLLM_VENV/bin/python" ]; then
    echo "make_vllm_ray_venv: no $VLLM_VENV; not building $VENV (the vllm engine test skips)" >&2
    exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
VLLM_SITE=$("$VLLM_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Later in sys.path than the venv's own packages: what pip installs here wins.
echo "$(cd "$VLLM_SITE" && pwd)" > "$SITE/zz_vllm.pth"
pwd > "$SITE/zz_croptune.pth"
"$VENV/bin/pip" install --disable-pip-version-check -q "$RAY"
cat > "$SITE/croptune_vllm_alias.py" <<'PY'
"""ray.data.llm (Ray 2.60) imports vllm.entrypoints.chat_utils; vLLM 0.32 has it as
vllm.renderers.chat_utils: the old name is aliased on first import."""

import importlib
import importlib.abc
import importlib.util
import sys

OLD, NEW = "vllm.entrypoints.chat_utils", "vllm.renderers.chat_utils"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == OLD else None

    def create_module(self, spec):
        return importlib.import_module(NEW)

    def exec_module(self, module):
        sys.modules[OLD] = module


sys.meta_path.insert(0, _Alias())
PY
echo "import croptune_vllm_alias" > "$SITE/croptune_vllm_alias.pth"
"$VENV/bin/python" -c "import vllm, ray, ray.data.llm, teacher_labeling.cluster.stages" \
    || { echo "make_vllm_ray_venv: $VENV cannot import vllm, ray and croptune" >&2; exit 1; }
touch "$VENV/.installed"
echo "make_vllm_ray_venv: $VENV ready"
