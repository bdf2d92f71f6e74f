"""The review page: self-contained, escaped, boxes on the right image and pixels, in a browser."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import time
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.boxes import Box
from toolkit.images import load_image
from toolkit.report import boxes_disagree, write_report
from toolkit.store import CropRow, ImageRow, ItemRow, RunStore

CHROMIUM = "/usr/bin/chromium"
EVIL_TITLE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
EVIL_CATEGORY = 'toys" onmouseover="window.__pwned=3'
BACKGROUND = (235, 235, 235)

# Boxes in pixels of the ORIENTED images.
QWEN_A0 = Box(0, 40, 30, 200, 120, label="barcode", score=0.9, source="qwen")
QWEN_A1 = Box(
    1, 20, 100, 100, 250, label="warning <b>hot</b>", score=0.8, source="qwen"
)  # upright 150x300
FUSED_A0 = Box(0, 300, 200, 380, 280, label="text", source="fused")
QWEN_C0 = Box(0, 10, 10, 60, 40, label="model", source="qwen")


def _png(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size, BACKGROUND).save(path)
    return path


def _exif_rotated_jpeg(path: Path) -> Path:
    """Stored 300x150 with EXIF Orientation 6: upright it is 150x300."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 150), BACKGROUND).save(path, quality=95, exif=exif)
    return path


def _row(item_id: str, index: int, path: Path) -> ImageRow:
    loaded = load_image(str(path))
    return ImageRow(item_id, index, str(path), loaded.sha256, *loaded.size, None)


def _make_run(root: Path) -> RunStore:
    """Three items: A (two photos, one EXIF-rotated, a crop, a failure), B (evil title), C."""
    src = root / "src"
    src.mkdir()
    store = RunStore(root / "run")
    a0 = _png(src / "a0.png", (800, 600))
    a1 = _exif_rotated_jpeg(src / "a1.jpg")
    missing = ImageRow("A", 2, str(src / "gone.png"), None, None, None, "file not found")
    store.put_item(
        ItemRow("A", "Kettle 1.7 l", "kitchen", "Made in <EU>", None, []),
        0,
        "fa",
        [_row("A", 0, a0), _row("A", 1, a1), missing],
    )
    b0 = _png(src / "b0.png", (200, 100))
    store.put_item(
        ItemRow("B", EVIL_TITLE, EVIL_CATEGORY, None, None, []), 1, "fb", [_row("B", 0, b0)]
    )
    c0 = _png(src / "c0.png", (120, 80))
    store.put_item(ItemRow("C", "Lamp", "kitchen", None, None, []), 2, "fc", [_row("C", 0, c0)])

    attrs_a = {
        "attributes": {"brand": "Acme", "size": "1.7 l"},
        "regulatory_safety": {"certification_marks": ["CE", "UKCA"]},
    }
    store.record_answer("k1", "gpt-4.1", "gpt-4.1", "A", None, "{}", {}, labels=attrs_a)
    store.record_answer("k2", "qwen", "qwen-vl", "A", 0, "[]", {}, boxes=[QWEN_A0])
    store.record_answer("k3", "qwen", "qwen-vl", "A", 1, "[]", {}, boxes=[QWEN_A1])
    store.set_boxes("A", "fused", [FUSED_A0])
    store.log_event("label", "HTTP 500", "error", "A", "qwen", 0)
    # B: two attribute teachers that disagree on the brand (and B has no boxes).
    store.record_answer(
        "k4",
        "gpt-4.1",
        "gpt-4.1",
        "B",
        None,
        "{}",
        {},
        labels={"attributes": {"brand": "<i>Evil</i>", "color": "red"}},
    )
    store.record_answer(
        "k5",
        "ref",
        "reference",
        "B",
        None,
        "{}",
        {},
        labels={"attributes": {"brand": "Other", "color": "RED"}},
    )
    # C: boxes only, no attributes.
    store.record_answer("k6", "qwen", "qwen-vl", "C", 0, "[]", {}, boxes=[QWEN_C0])

    crops = store.run_dir / "crops"
    crops.mkdir()
    Image.new("RGB", (96, 96), (10, 120, 200)).save(crops / "abc.png")
    store.set_meta("crop_config_hash", "h1")
    store.add_crop(
        CropRow("A", 0, (20, 10, 220, 210), "crops/abc.png", "s", "enclosing-square", "h1", [2])
    )
    store.add_crop(
        CropRow("A", 1, (0, 0, 9, 9), "crops/old.png", "s", "enclosing-square", "h0", [])
    )
    return store


class _Tree(HTMLParser):
    """Every element with its attributes and its ancestors' (tag, attrs)."""

    VOID = {"meta", "img", "input", "br", "link", "hr", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.elements: list[tuple[str, dict[str, str | None], list]] = []

    def handle_starttag(self, tag, attrs):
        element = (tag, dict(attrs), list(self.stack))
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def find(self, tag: str, cls: str | None = None) -> list[tuple[str, dict, list]]:
        return [
            e
            for e in self.elements
            if e[0] == tag and (cls is None or cls in (e[1].get("class") or "").split())
        ]


def _parse(html: str) -> _Tree:
    tree = _Tree()
    tree.feed(html)
    return tree


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    store = _make_run(root)
    try:
        return write_report(store, store.run_dir / "report.html", page_size=50, thumb_side=240)
    finally:
        store.close()


@pytest.fixture(scope="module")
def html(report: Path) -> str:
    return report.read_text(encoding="utf-8")


def _sections(tree: _Tree) -> dict[str, dict]:
    return {e[1]["data-item-id"]: e[1] for e in tree.find("section", "item")}


def test_self_contained_and_one_section_per_item(report: Path, html: str):
    assert report.name == "report.html"
    assert not list(report.parent.glob(".report.html.partial-*"))
    tree = _parse(html)
    for _tag, attrs, _ in tree.elements:
        for name in ("src", "href", "action", "poster", "srcset"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (name, value[:80])
            if name == "src" and value:
                assert value.startswith("data:image/jpeg;base64,"), value[:40]
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    assert not re.search(r"@import|<link\b", html)
    assert list(_sections(tree)) == ["A", "B", "C"]
    assert all(i.get("loading") == "lazy" for _, i, _ in tree.find("img"))


def test_listing_text_is_escaped(html: str):
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html
    assert "<script>window.__pwned" not in html
    assert '<img src=x onerror="window.__pwned' not in html
    assert 'onmouseover="window' not in html  # the category cannot break out of its attribute
    assert "&lt;i&gt;Evil&lt;/i&gt;" in html  # a teacher's answer is listing-grade text too
    assert "warning &lt;b&gt;hot&lt;/b&gt;" in html  # and so is a box label
    tree = _parse(html)
    assert _sections(tree)["B"]["data-category"] == EVIL_CATEGORY  # round-trips as plain text
    # Only the page's own script: one <script>, and it carries the CSP nonce.
    scripts = tree.find("script")
    assert len(scripts) == 1 and scripts[0][1].get("nonce")
    assert "script-src 'nonce-" in html


def test_flags_and_filters(html: str):
    tree = _parse(html)
    sections = _sections(tree)
    assert sections["A"]["data-flags"] == "failed photos"  # HTTP 500; image 2 is missing
    assert sections["B"]["data-flags"] == "disagree"
    assert sections["C"]["data-flags"] == "no-label"
    assert sections["A"]["data-category"] == "kitchen"
    failed = [e for e in tree.find("input") if e[1].get("data-flag") == "failed"]
    disagree = [e for e in tree.find("input") if e[1].get("data-flag") == "disagree"]
    assert failed and failed[0][1]["type"] == "checkbox" and disagree
    assert [e[1].get("value") for e in tree.find("option")][:1] == [""]
    assert {e[1].get("value") for e in tree.find("option")} == {"", "kitchen", EVIL_CATEGORY}
    assert "HTTP 500" in html
    # The disagreeing row is marked, the agreeing one (RED vs red) is not.
    rows = {e[1]["data-field"]: e[1].get("class") for e in tree.find("tr") if "data-field" in e[1]}
    assert rows["attributes.brand"] == "diff" and rows["attributes.color"] is None


def test_a_failure_a_rerun_answered_is_not_shown_as_failed(tmp_path: Path):
    store = _make_run(tmp_path)  # A: qwen's request for image 0 failed (HTTP 500) ...
    time.sleep(0.01)
    store.record_answer("k2b", "qwen", "qwen-vl", "A", 0, "[]", {}, boxes=[QWEN_A0])  # ... then
    store.close()
    sections = _sections(_parse(_render(tmp_path / "run")))
    assert sections["A"]["data-flags"] == "photos"  # image 2 is still missing; not failed


def test_boxes_disagree_rule():
    a = Box(0, 0, 0, 10, 10, source="a")
    assert not boxes_disagree([a, Box(0, 1, 0, 10, 10, source="b")])  # IoU 0.9
    assert boxes_disagree([a, Box(0, 5, 5, 15, 15, source="b")])  # IoU 0.14
    assert boxes_disagree([a, Box(1, 0, 0, 10, 10, source="b")])  # another image
    assert not boxes_disagree([a, Box(0, 50, 50, 60, 60, source="fused")])  # fused left out
    assert not boxes_disagree([a, Box(0, 50, 50, 60, 60, source="a")])  # one teacher


def test_box_spans_carry_image_and_original_pixels(html: str):
    tree = _parse(html)
    spans = [e for e in tree.find("span", "box")]
    by_item: dict[str, list[dict]] = {}
    for _tag, attrs, ancestors in spans:
        section = next(a for t, a in ancestors if t == "section")
        figure = next(a for t, a in reversed(ancestors) if t == "figure")
        assert figure["data-image"] == attrs["data-image"]  # inside its own image's figure
        by_item.setdefault(section["data-item-id"], []).append(attrs)
    got = {
        (item, a["data-image"], a["data-source"], a["data-xyxy"])
        for item, spans_ in by_item.items()
        for a in spans_
    }
    assert got == {
        ("A", "0", "qwen", "40,30,200,120"),
        ("A", "0", "fused", "300,200,380,280"),
        ("A", "1", "qwen", "20,100,100,250"),  # upright coordinates of the EXIF-rotated photo
        ("C", "0", "qwen", "10,10,60,40"),
    }
    captions = re.findall(r"#1 · <span class=\"mono\">a1.jpg</span> · (\d+)×(\d+)", html)
    assert captions == [("150", "300")]  # the rotated photo is shown upright
    # The unusable photo and the crop of the current config only, each with its image index.
    assert "image 2 could not be shown" in html and "file not found" in html
    crops = tree.find("figure", "crop")
    assert [c[1]["data-image"] for c in crops] == ["0"]
    assert "from image #0 · 200×200 px" in html


def test_duplicate_crop_is_shown_as_such(tmp_path: Path):
    if "duplicate_of" not in CropRow.__dataclass_fields__:
        pytest.skip("this store has no crop de-duplication (CropRow.duplicate_of)")
    store = _make_run(tmp_path)
    crop = CropRow("A", 1, (0, 0, 96, 96), "crops/abc.png", "s", "enclosing-square", "h1", [3])
    store.add_crop(dataclasses.replace(crop, duplicate_of="image:0"))
    out = write_report(store, store.run_dir / "report.html", thumb_side=64)
    store.close()
    html = out.read_text(encoding="utf-8")
    crops = _parse(html).find("figure", "crop")
    assert [(c[1]["data-image"], c[1]["class"]) for c in crops] == [
        ("0", "crop"),
        ("1", "crop dup"),
    ]
    assert 'duplicate of <span class="mono">image:0</span>, not used' in html


def _thumbnail(tree: _Tree, item: str, image: int) -> np.ndarray:
    for _tag, attrs, ancestors in tree.find("img"):
        section = next(a for t, a in ancestors if t == "section")
        figure = next(a for t, a in reversed(ancestors) if t == "figure")
        if section["data-item-id"] == item and figure["data-image"] == str(image):
            data = base64.b64decode(attrs["src"].split(",", 1)[1])
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    raise AssertionError(f"no thumbnail for {item} image {image}")


def _hex(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def _has_colour(pixels: np.ndarray, x: float, y: float, colour: np.ndarray, tol: int = 40) -> bool:
    """Whether a pixel within 2 px of (x, y) is within tol of colour on every channel."""
    xi, yi = round(x), round(y)
    patch = pixels[max(0, yi - 2) : yi + 3, max(0, xi - 2) : xi + 3]
    return bool((np.abs(patch - colour) <= tol).all(axis=-1).any())


def test_thumbnails_have_the_teacher_colour_on_the_box_edges(html: str):
    tree = _parse(html)
    legend = {
        e[1]["data-source"]: _hex(e[1]["data-color"])
        for e in tree.find("li")
        if "data-color" in e[1]
    }
    assert set(legend) == {"qwen", "fused"}
    assert np.abs(legend["qwen"] - legend["fused"]).max() > 100
    for item, image, box, size in [
        ("A", 0, QWEN_A0, (800, 600)),
        ("A", 1, QWEN_A1, (150, 300)),
        ("A", 0, FUSED_A0, (800, 600)),
        ("C", 0, QWEN_C0, (120, 80)),
    ]:
        pixels = _thumbnail(tree, item, image)
        scale = min(1.0, 240 / max(size))
        assert pixels.shape[:2] == (round(size[1] * scale), round(size[0] * scale))
        colour = legend[box.source]
        x1, y1, x2, y2 = (v * scale for v in box.xyxy)
        mid_x, mid_y = (x1 + x2) / 2, (y1 + y2) / 2
        for x, y in [(x1, mid_y), (x2, mid_y), (mid_x, y1), (mid_x, y2)]:
            assert _has_colour(pixels, x, y, colour), (item, image, box.source, x, y)
        assert not _has_colour(pixels, mid_x, mid_y, colour)  # an outline, not a filled box
        assert _has_colour(pixels, mid_x, mid_y, np.array(BACKGROUND), tol=12)


def test_pagination_hides_all_but_the_first_page(tmp_path: Path):
    store = _make_run(tmp_path)
    out = write_report(store, tmp_path / "out" / "page.html", page_size=1, thumb_side=64)
    store.close()
    tree = _parse(out.read_text(encoding="utf-8"))
    sections = tree.find("section", "item")
    assert [("hidden" in s[1], s[1]["data-page"]) for s in sections] == [
        (False, "0"),
        (True, "1"),
        (True, "2"),
    ]
    assert "Page 1 of 3" in out.read_text(encoding="utf-8")


def test_unloadable_image_shows_a_placeholder(tmp_path: Path):
    store = _make_run(tmp_path)
    Image.new("RGB", (800, 600), (0, 0, 0)).save(tmp_path / "src" / "a0.png")  # changed
    (tmp_path / "src" / "c0.png").unlink()  # gone
    (store.run_dir / "crops" / "abc.png").unlink()
    out = write_report(store, store.run_dir / "report.html")
    store.close()
    html = out.read_text(encoding="utf-8")
    assert "changed since ingest" in html
    assert "file not found" in html
    assert "crop file is missing" in html
    tree = _parse(html)
    assert len(tree.find("section", "item")) == 3
    assert len(tree.find("span", "box")) == 4  # the boxes are still listed


# --- in a real browser ---------------------------------------------------------------------


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)",
)


@needs_chromium
def test_browser_runs_the_page_script_and_not_the_listing(report: Path, tmp_path: Path):
    # How "the injected title did not run" is observed: the page's DOM cannot show a JS
    # global, so the test serves a COPY of the page with one probe script appended (carrying
    # the page's own CSP nonce, so it runs exactly like the page's script would). The probe
    # waits for `load` (after which an injected <img onerror> would have fired) and writes
    # window.__pwned into <body data-pwned>; --virtual-time-budget lets the page settle
    # before --dump-dom prints the DOM as the scripts left it.
    html = report.read_text(encoding="utf-8")
    nonce = re.search(r'<script nonce="([^"]+)">', html).group(1)
    probe = (
        f'<script nonce="{nonce}">window.addEventListener("load", function () {{'
        'document.body.dataset.pwned = String(window.__pwned === undefined ? "no" : window.__pwned);'
        "});</script></body>"
    )
    probed = report.with_name("probe.html")
    probed.write_text(html.replace("</body>", probe), encoding="utf-8")
    result = _chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", probed.as_uri())
    dom = result.stdout
    assert "<section" in dom, result.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ready="1"' in body  # the page's own script ran
    assert 'data-pwned="no"' in body  # the probe ran and saw nothing injected run
    # The title is a text node in the live DOM, not an element.
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in dom
    assert '<img src="x"' not in dom
    # All 3 items fit on page 1: none is hidden after the script ran.
    assert len(re.findall(r"<section [^>]*hidden", dom)) == 0


@needs_chromium
def test_browser_screenshot(report: Path, tmp_path: Path):
    shot = tmp_path / "report.png"
    result = _chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        "--virtual-time-budget=3000",
        report.as_uri(),
    )
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    if os.environ.get("CROPTUNE_ARTIFACTS"):
        target = Path(os.environ["CROPTUNE_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")


@needs_chromium
def test_browser_pagination_and_failure_filter(tmp_path: Path):
    store = _make_run(tmp_path)
    out = write_report(store, tmp_path / "paged.html", page_size=1, thumb_side=64)
    store.close()
    html = out.read_text(encoding="utf-8")
    nonce = re.search(r'<script nonce="([^"]+)">', html).group(1)
    # Next page, then tick "failures only" (one match: back to one page), then click a photo.
    script = """
    function visible() {
      return Array.prototype.filter.call(document.querySelectorAll("section.item"),
        function (s) { return !s.hidden; }).map(function (s) { return s.dataset.itemId; });
    }
    function state() { return document.getElementById("page-info").textContent + ":" + visible(); }
    window.addEventListener("load", function () {
      var seen = [state()];
      document.getElementById("next").click();
      seen.push(state());
      var box = document.getElementById("only-failed");
      box.checked = true;
      box.dispatchEvent(new Event("change"));
      seen.push(state());
      document.querySelector("figure.photo .frame img").click();
      document.body.dataset.seen = seen.join("|");
      document.body.dataset.enlarged = document.querySelector("figure.photo").className;
    });
    """
    drive = f'<script nonce="{nonce}">{script}</script></body>'
    driven = out.with_name("driven.html")
    driven.write_text(html.replace("</body>", drive), encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", driven.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-seen="Page 1 of 3:A|Page 2 of 3:B|Page 1 of 1:A"' in body
    assert 'data-enlarged="photo wide"' in body  # a click on a photo widens it


# --- what the page says: predict work folders, items without images ---------------------------
#
# Each case builds a run folder with the real stages (predict_catalog on a loopback student or
# the tiny in-process one, run_label with the reference teacher), renders it, and the page's
# header figures and each section's flags and text are compared with what the run did.


def _section_texts(html: str) -> dict[str, tuple[str, str]]:
    """{item id ("" for a row without one): (data-flags, the section's visible text)}."""
    sections = {}
    for match in re.finditer(r"<section class=\"item\"(.*?)>(.*?)</section>", html, re.DOTALL):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))
        text = re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", match.group(2)))
        text = " ".join(unescape(text).split())
        sections[unescape(attrs["data-item-id"])] = (attrs["data-flags"], text)
    return sections


def _header_counts(html: str) -> list[str]:
    """The header's figures as shown, e.g. "5 failed (catalog 2, decode 2, parse 1)"."""
    block = html[html.index('<ul class="counts"') : html.index("</ul>", html.index('"counts"'))]
    items = re.findall(r"<li[^>]*>(.*?)</li>", block, re.DOTALL)
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", li)).split()) for li in items]


def _render(store_dir: Path) -> str:
    with RunStore(store_dir, create=False) as store:
        out = write_report(store, store_dir / "report.html", thumb_side=64)
    return out.read_text(encoding="utf-8")


def _predict_folder(tmp: Path, items: list[dict], student, *, tail: str = "", out: str = "p.jsonl"):
    """predict_catalog of these catalog rows (plus raw lines `tail`); returns the work folder."""
    from finetune.predict import default_workdir, load_bundle, predict_catalog
    from tests.test_predict import write_bundle, write_catalog

    catalog = write_catalog(tmp / "catalog", items)
    if tail:
        with catalog.open("a") as handle:
            handle.write(tail)
    bundle = load_bundle(write_bundle(tmp / "bundle"))
    predict_catalog(bundle, catalog, tmp / out, student)
    return default_workdir(tmp / out)


def _photo(tmp: Path, name: str) -> str:
    from tests.test_predict import photo

    return "img/" + photo(tmp / "catalog" / "img" / name)


def _answers(bad: dict[str, str]):
    """A loopback student: the answer in `bad` for a title found in it, else a good answer."""
    from tests.test_predict import ANSWER

    def responder(request) -> str:
        return next((a for t, a in bad.items() if f"title {t}." in request.texts[-1]),
                    json.dumps(ANSWER))  # fmt: skip

    return responder


def _items(*names: str) -> list[dict]:
    return [{"item_id": n, "images": [f"img/{n}.png"], "title": f"title {n}."} for n in names]


def _with_photos(tmp: Path, rows: list[dict]) -> list[dict]:
    for row in rows:
        for ref in row["images"]:
            if ref.endswith(".png") and "gone" not in ref:
                _photo(tmp, ref.removeprefix("img/"))
    return rows


def _served(tmp: Path, rows: list[dict], bad: dict[str, str], **kwargs) -> Path:
    from tests.fake_openai import FakeOpenAI
    from tests.test_predict import endpoint

    with FakeOpenAI(_answers(bad)) as server:
        return _predict_folder(tmp, _with_photos(tmp, rows), endpoint(server), **kwargs)


def _case_repaired_answer(tmp: Path) -> str:
    from tests.test_predict import ANSWER

    # I1's answer is cut off before its end: repaired, predicted, not valid JSON as written
    return _render(_served(tmp, _items("I0", "I1", "I2"), {"I1": json.dumps(ANSWER)[:-12]}))


def _case_not_json(tmp: Path) -> str:
    return _render(_served(tmp, _items("I0", "I1"), {"I1": "<script>window.__pwned=9</script> no"}))


def _case_without_images(tmp: Path) -> str:
    (tmp / "catalog" / "img").mkdir(parents=True)
    (tmp / "catalog" / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows = [
        *_items("good"),
        {"item_id": "empty", "images": [], "title": "title empty."},
        {"item_id": "missing", "images": ["img/nowhere.jpg"]},
        {"item_id": "corrupt", "images": ["img/broken.jpg"]},
        {"item_id": "partial", "images": ["img/partial.png", "img/gone.png"]},
    ]
    return _render(_served(tmp, rows, {}, tail="{not json\n"))


def _case_image_gone(tmp: Path) -> str:
    from tests.fake_openai import FakeOpenAI
    from tests.test_predict import endpoint

    rows = _with_photos(tmp, _items("A", "B"))
    with FakeOpenAI(_answers({})) as server:
        _predict_folder(tmp, rows, endpoint(server, "student-1"))
        (tmp / "catalog" / "img" / "B.png").unlink()
        # another student: every item is predicted again, and B's photo is gone
        workdir = _predict_folder(tmp, rows, endpoint(server, "student-2"))
    return _render(workdir)


def _case_stopped(tmp: Path) -> str:
    from finetune.infer import TransformersBackend

    # the tiny student's random weights fall into a loop: the real repetition stop ends it
    student = TransformersBackend("croptune:tiny", max_new_tokens=600)
    return _render(_predict_folder(tmp, _with_photos(tmp, _items("L")), student))


def _case_rerun(tmp: Path) -> str:
    from tests.fake_openai import FakeOpenAI
    from tests.test_predict import endpoint

    rows = _with_photos(tmp, _items("A", "B"))
    with FakeOpenAI(_answers({"B": "no idea"})) as server:
        _predict_folder(tmp, rows, endpoint(server, "student-1"))
    with FakeOpenAI(_answers({"A": "no idea"})) as server:
        workdir = _predict_folder(tmp, rows, endpoint(server, "student-2"))
    return _render(workdir)  # only the second run's results: A failed, B predicted


def _case_killed(tmp: Path) -> str:
    from finetune.predict import load_bundle, predict_catalog
    from tests.fake_openai import FakeOpenAI
    from tests.test_predict import endpoint, write_bundle, write_catalog

    catalog = write_catalog(tmp / "catalog", _with_photos(tmp, _items("A", "B")))
    bundle = load_bundle(write_bundle(tmp / "bundle"))

    def killed(record: dict) -> None:
        raise KeyboardInterrupt

    with FakeOpenAI(_answers({})) as server, pytest.raises(KeyboardInterrupt):
        predict_catalog(bundle, catalog, tmp / "p.jsonl", endpoint(server), batch_size=1,
                        on_record=killed)  # fmt: skip
    return _render(tmp / "p.work")


def _case_label_run(tmp: Path) -> str:
    _make_run(tmp).close()
    return _render(tmp / "run")


def _case_label_never_ingested(tmp: Path) -> str:
    from croptune.pipeline import run_label
    from teacher_labeling.teachers import LabelConfig, TeacherConfig
    from tests.test_predict import write_catalog

    rows = [
        {"item_id": "good", "images": [_photo(tmp, "good.png")], "attributes": {"attributes": {"brand": "Acme"}}},
        {"item_id": "empty", "images": [], "attributes": {"attributes": {"brand": "Acme"}}},
        {"item_id": "missing", "images": ["img/nowhere.jpg"]},
        # flat attributes: placed in their group, with a warning in the store
        {"item_id": "flat", "images": [_photo(tmp, "flat.png")], "attributes": {"brand": "Acme"}},
    ]  # fmt: skip
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(write_catalog(tmp / "catalog", rows), LabelConfig(teachers=[teacher]), tmp / "run")
    return _render(tmp / "run")


PREDICTED = "status predicted answer valid JSON student saw 1 image (16 image tokens)"
NOTES = "unknown field attributes.no_such_field dropped unknown group 'extra_group' dropped"
BRAND = "attributes.brand Acme"


@dataclasses.dataclass
class PageCase:
    build: object  # (tmp folder) -> the page's HTML
    header: list[str]  # the header's figures, exactly
    sections: dict[str, tuple[str, list[str]]]  # id -> (data-flags, texts in its section)
    absent: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # id -> not there


PAGE_CASES = {
    # a predict work folder with one bad answer (cut off, repaired): counted as repaired JSON,
    # the others intact
    "one-repaired-answer": PageCase(
        _case_repaired_answer,
        [
            "3 items (the latest predict run's output lines)",
            "3 predicted",
            "0 failed",
            "2 valid JSON",
            "1 repaired JSON (not valid as written)",
            "0 unreadable answers (no JSON object of attributes)",
            "0 stopped generation",
            "3 with notes",
            "3 usable photos",
            "0 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "I0": ("warned", [PREDICTED, BRAND, NOTES]),
            "I1": (
                "repaired warned",
                ["status predicted answer not valid JSON as written; repaired, then read", BRAND],
            ),
            "I2": ("warned", [PREDICTED, BRAND]),
        },
    ),
    # an answer that was not JSON: that item failed at parse, with the answer (escaped)
    "answer-not-json": PageCase(
        _case_not_json,
        [
            "2 items (the latest predict run's output lines)",
            "1 predicted",
            "1 failed (parse 1)",
            "1 valid JSON",
            "0 repaired JSON (not valid as written)",
            "1 unreadable answers (no JSON object of attributes)",
            "0 stopped generation",
            "1 with notes",
            "2 usable photos",
            "0 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "I0": ("warned", [PREDICTED, BRAND]),
            "I1": (
                "failed",
                [
                    "status failed at parse answer no JSON object of attributes could be read from it",
                    "The answer <script>window.__pwned=9</script> no",
                    "No predicted attributes.",
                    "parse : no JSON object or list in the answer",
                ],
            ),
        },
    ),
    # items without images: no images at all, a missing file, a corrupt file, one photo of two
    # missing; and a catalog line that is not JSON. Every output line has its section, in the
    # output's order (rows that did not load last).
    "items-without-images": PageCase(
        _case_without_images,
        [
            "6 items (the latest predict run's output lines)",
            "2 predicted",
            "4 failed (catalog 2, decode 2)",
            "2 valid JSON",
            "0 repaired JSON (not valid as written)",
            "0 unreadable answers (no JSON object of attributes)",
            "0 stopped generation",
            "2 with notes",
            "2 usable photos (1 not usable)",
            "4 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "good": ("warned", [PREDICTED, BRAND]),
            "missing": (
                "failed photos",
                [
                    "status failed at decode",
                    "decode : image 0 (img/nowhere.jpg): file not found; no usable image",
                ],
            ),
            "corrupt": (
                "failed photos",
                ["status failed at decode", "image 0 (img/broken.jpg): corrupt or truncated image"],
            ),
            "partial": (
                "photos warned",
                ["image 1 could not be shown file not found", PREDICTED, "image 1: file not found"],
            ),
            "empty": (
                "failed photos",
                [
                    "no photo of this item is in the run",
                    "status failed at catalog answer none: the item failed before the student answered",
                    "catalog : images: no images: an item needs at least one photo",
                ],
            ),
            "": (
                "failed",
                [
                    "catalog row without an item id (line 6)",
                    "status failed at catalog",
                    "catalog : not valid JSON",
                ],
            ),
        },
    ),
    # an item whose photo file is gone after ingest: predicted again, it fails at decode, and
    # the first run's prediction of it is not shown
    "image-file-gone": PageCase(
        _case_image_gone,
        [
            "2 items (the latest predict run's output lines)",
            "1 predicted",
            "1 failed (decode 1)",
            "1 valid JSON",
            "0 repaired JSON (not valid as written)",
            "0 unreadable answers (no JSON object of attributes)",
            "0 stopped generation",
            "1 with notes",
            "1 usable photos (1 not usable)",
            "1 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "A": ("warned", [PREDICTED, BRAND]),
            "B": (
                "failed photos",
                [
                    "image 0 could not be shown file not found (it was there at ingest)",
                    "status failed at decode",
                    "decode : image 0: file not found",
                    "No predicted attributes.",
                ],
            ),
        },
        absent={"B": [BRAND, "valid JSON"]},
    ),
    # a repetition-stopped answer (the real stop of the in-process student)
    "repetition-stopped": PageCase(
        _case_stopped,
        [
            "1 items (the latest predict run's output lines)",
            "0 predicted",
            "1 failed (parse 1)",
            "0 valid JSON",
            "0 repaired JSON (not valid as written)",
            "1 unreadable answers (no JSON object of attributes)",
            "1 stopped generation",
            "0 with notes",
            "1 usable photos",
            "0 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "L": (
                "failed stopped",
                [
                    "status failed at parse",
                    "generation stopped: runaway repetition: a ",
                    "student saw 1 image",
                ],
            )
        },
    ),
    # a second predict run: only its results, not the first run's (A now fails, B is fixed)
    "rerun-shows-the-latest-run": PageCase(
        _case_rerun,
        [
            "2 items (the latest predict run's output lines)",
            "1 predicted",
            "1 failed (parse 1)",
            "1 valid JSON",
            "0 repaired JSON (not valid as written)",
            "1 unreadable answers (no JSON object of attributes)",
            "0 stopped generation",
            "1 with notes",
            "2 usable photos",
            "0 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "A": ("failed", ["status failed at parse", "The answer no idea"]),
            "B": ("warned", [PREDICTED, BRAND]),
        },
        absent={"A": [BRAND], "B": ["failed", "no idea"]},
    ),
    # a killed predict run: the items it did not finish say so
    "killed-run": PageCase(
        _case_killed,
        [
            "2 items (the latest predict run's output lines)",
            "1 predicted",
            "0 failed",
            "1 not predicted yet",
            "1 valid JSON",
            "0 repaired JSON (not valid as written)",
            "0 unreadable answers (no JSON object of attributes)",
            "0 stopped generation",
            "1 with notes",
            "2 usable photos",
            "0 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "A": ("warned", [PREDICTED, BRAND]),
            "B": (
                "pending",
                ["not predicted yet: the latest predict run stopped before this item"],
            ),
        },
    ),
    # a labeled run, as before: teachers' columns and final, failures from the label stage
    "label-run": PageCase(
        _case_label_run,
        [
            "3 items",
            "1 failed",
            "1 disagree",
            "1 without labels",
            "0 with warnings",
            "4 usable photos (1 not usable)",
            "1 items with photo problems",
            "4 boxes (fused 1, qwen 3)",
            "1 crops",
        ],
        {
            "A": (
                "failed photos",
                [
                    "field gpt-4.1 final attributes.brand Acme Acme",
                    "image 2 could not be shown file not found",
                    "label · qwen · image 0: HTTP 500",
                ],
            ),
            "B": ("disagree", ["field gpt-4.1 ref final"]),
            "C": ("no-label", ["No final attributes."]),
        },
    ),
    # a labeled run with items that never reached it: each has its section and its errors,
    # after the stored items; a label warning is shown on its item
    "label-run-items-never-ingested": PageCase(
        _case_label_never_ingested,
        [
            "4 items (2 never reached the run)",
            "2 failed",
            "0 disagree",
            "2 without labels",
            "1 with warnings",
            "2 usable photos",
            "2 items with photo problems",
            "0 boxes",
            "0 crops",
        ],
        {
            "good": ("", ["field reference final attributes.brand Acme Acme"]),
            "flat": ("warned", ["attributes.brand Acme Acme", "label · reference: field 'brand'"]),
            "empty": (
                "failed no-label photos",
                [
                    "no photo of this item is in the run",
                    "ingest : item empty: images: no images: an item needs at least one photo",
                ],
            ),
            "missing": (
                "failed no-label photos",
                [
                    "ingest : image 0 (img/nowhere.jpg): file not found",
                    "ingest : no usable image; the item is skipped",
                ],
            ),
        },
    ),
}


@pytest.mark.parametrize("case", PAGE_CASES.values(), ids=PAGE_CASES.keys())
def test_the_page_says_what_the_run_did(case: PageCase, tmp_path: Path):
    html = case.build(tmp_path)
    assert _header_counts(html) == case.header
    sections = _section_texts(html)
    assert list(sections) == list(case.sections)  # every line / item, in order
    for key, (flags, texts) in case.sections.items():
        got_flags, text = sections[key]
        assert got_flags == flags, (key, text)
        for expected in texts:
            assert expected in text, (key, expected, text)
        for unexpected in case.absent.get(key, []):
            assert unexpected not in text, (key, unexpected, text)
    assert "<script>window.__pwned" not in html  # an answer is untrusted text too


@needs_chromium
def test_browser_predict_page_filters_and_runs_no_answer(tmp_path: Path):
    rows = [*_items("good", "bad"), {"item_id": "missing", "images": ["img/nowhere.jpg"]}]
    evil = '<img src=x onerror="window.__pwned=4"><script>window.__pwned=5</script>'
    html = _render(_served(tmp_path, rows, {"bad": evil}))
    nonce = re.search(r'<script nonce="([^"]+)">', html).group(1)
    # After load (an injected handler would have run by then): the failures, then the
    # failures with photo problems, then no filter; and whether anything injected ran.
    script = """
    function visible() {
      return Array.prototype.filter.call(document.querySelectorAll("section.item"),
        function (s) { return !s.hidden; }).map(function (s) { return s.dataset.itemId; });
    }
    function tick(id, on) {
      var box = document.getElementById(id);
      box.checked = on;
      box.dispatchEvent(new Event("change"));
      return document.getElementById("match-info").textContent + ":" + visible();
    }
    window.addEventListener("load", function () {
      var seen = [tick("only-failed", true), tick("only-photos", true), tick("only-failed", false)];
      seen.push(tick("only-photos", false));
      document.body.dataset.seen = seen.join("|");
      document.body.dataset.pwned = String(window.__pwned === undefined ? "no" : window.__pwned);
    });
    """
    driven = tmp_path / "driven.html"
    driven.write_text(html.replace("</body>", f'<script nonce="{nonce}">{script}</script></body>'))
    result = _chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", driven.as_uri())
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stderr[-2000:]
    assert 'data-ready="1"' in body.group(0)
    assert 'data-pwned="no"' in body.group(0)
    assert (
        'data-seen="2 of 3 items:bad,missing|1 of 3 items:missing|1 of 3 items:missing'
        '|3 items:good,bad,missing"'
    ) in body.group(0)
