"""ultralytics set up to run offline: its config folder, the fonts it would download, no
pip installs, and PIL.Image.open restored after ultralytics patches it at import."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from toolkit.errors import CroptuneError


def prepare_ultralytics() -> Path:
    """Set ultralytics up to run offline and outside the home folder; returns its config dir.

    Call before importing ultralytics: its config folder is fixed at import time.
    """
    if "ultralytics" not in sys.modules:
        scratch: Path | None = None
        for name in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR"):
            if not os.environ.get(name):
                if scratch is None:
                    scratch = Path(tempfile.mkdtemp(prefix="croptune-ultralytics-"))
                    atexit.register(shutil.rmtree, scratch, True)
                os.environ[name] = str(scratch / name.lower())
        # Offline: no hub/analytics calls, no pip installs of missing optional packages.
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if SETTINGS.get("sync", True):
        SETTINGS.update(sync=False)
    _place_fonts(Path(USER_CONFIG_DIR))
    _restore_pil_open()
    return Path(USER_CONFIG_DIR)


def _restore_pil_open() -> None:
    """Undo ultralytics' process-wide patch of PIL.Image.open.

    On a file PIL cannot identify, the patched open pip-installs pi-heif (or raises
    ModuleNotFoundError offline) instead of raising UnidentifiedImageError, which would turn
    croptune's "corrupt image" message for one item into a crash or an install.
    """
    from PIL import Image

    try:
        from ultralytics.utils import patches
    except ImportError:  # an ultralytics without the patch
        return
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def _place_fonts(config_dir: Path) -> None:
    """Put the fonts ultralytics' check_font would otherwise download (matplotlib's serve)."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if not target.exists() and source.is_file():
            shutil.copyfile(source, target)


def require_onnx() -> None:
    """Fail before training when ONNX export is asked for and the onnx package is missing."""
    if importlib.util.find_spec("onnx") is None:
        raise CroptuneError(
            "export_onnx=true needs the `onnx` package, which is not installed; install it "
            "with `pip install onnx` (croptune never installs packages by itself), or train "
            "without export_onnx"
        )


def checked_model_source(model: str) -> str:
    """The model argument for ultralytics, checked so that nothing gets downloaded."""
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return str(path) if path.is_file() else model  # else a built-in architecture name
    if path.suffix == ".pt":
        if not path.is_file():
            raise CroptuneError(
                f"detector model {model} is not a file; croptune does not download weights: "
                "download pretrained .pt weights yourself and give their path, or use an "
                "architecture YAML such as yolo11n.yaml (random init)"
            )
        return str(path)
    raise CroptuneError(
        f"detector model {model!r} is neither an architecture .yaml (e.g. yolo11n.yaml) nor a "
        ".pt weights file"
    )


def ultralytics_device(device: str) -> str | None:
    """The device argument for ultralytics: None (it picks) for 'auto' or empty."""
    return None if device in ("", "auto") else device
