"""The UI in a real browser: Debian's Chromium, driven by Playwright, on the real app
(``buildflow run main:app --ui``: local bucket, the pretrained model, DuckDB).

The user's story: open the page, upload the real cat photo through the file picker, see
its card with a cat label within a few seconds, upload a corrupt JPEG and see it in the
dead-letter list with its reason. A screenshot is saved under the test's tmp folder;
``docs/ui_screenshot.png`` (the README's) is written when it is missing, or rewritten with
``BUILDFLOW_UPDATE_SCREENSHOT=1``, so a test run does not dirty the working tree.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from models.labels import CAT_CLASS_INDICES, imagenet_labels
from models.samples import sample_photos
from tests.models.sample_images import truncated_jpeg
from tests.ui.conftest import REPO, UiRun

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "ui_screenshot.png"
MODEL_READY_TIMEOUT_MS = 180_000  # importing torch and loading the model, on a busy machine
CARD_TIMEOUT_MS = 10_000  # upload -> card on the page, once the model is loaded
CAT_LABELS = {imagenet_labels()[i] for i in CAT_CLASS_INDICES}


def _save_small_png(png: bytes, path: Path) -> None:
    """``png`` as a 256-colour PNG (a README image of ~100 KB instead of ~400 KB)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, optimize=True)


def test_upload_the_cat_photo_and_a_corrupt_file_in_a_real_browser(
    tmp_path: Path, ui_runs: Callable[..., UiRun]
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: run ./setup.sh as root (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")

    photos = sample_photos()
    files = tmp_path / "files"
    files.mkdir()
    (files / "chelsea.jpg").write_bytes(photos["chelsea.jpg"])
    (files / "truncated.jpg").write_bytes(truncated_jpeg())
    more = [n for n in ("coffee.jpg", "dog.jpg", "astronaut.jpg", "rocket.jpg", "kite.jpg") if n in photos]
    for name in more:
        (files / name).write_bytes(photos[name])

    run = ui_runs("main:app", tmp_path / "state")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960}, device_scale_factor=1)
            page.goto(run.url)
            expect = sync_api.expect
            expect(page.locator("#run-status")).to_have_text("running", timeout=MODEL_READY_TIMEOUT_MS)

            # the real cat photo, through the page's file picker
            t0 = time.monotonic()
            page.set_input_files("#file-input", str(files / "chelsea.jpg"))
            card = page.locator('.card[data-name="chelsea.jpg"]')
            card.wait_for(timeout=CARD_TIMEOUT_MS)
            card_s = time.monotonic() - t0
            labels = card.locator(".label").all_inner_texts()
            assert labels and labels[0] in CAT_LABELS, labels
            assert len(labels) == 5
            expect(card.locator(".latency")).to_contain_text("upload → row")
            expect(card.locator(".event-id")).to_contain_text("buildflow-images/chelsea.jpg#")
            thumb = card.locator("img.thumb")
            expect(thumb).to_have_js_property("complete", True)
            assert thumb.evaluate("img => img.naturalWidth") > 0  # the thumbnail loaded
            expect(page.locator("#upload-log li.ok")).to_contain_text("chelsea.jpg uploaded")

            # a corrupt JPEG: accepted (its header is a JPEG's), then dead-lettered with its reason
            page.set_input_files("#file-input", str(files / "truncated.jpg"))
            dead = page.locator('#dead-letters tr[data-name="truncated.jpg"]')
            dead.wait_for(timeout=CARD_TIMEOUT_MS)
            expect(dead.locator(".error")).to_have_text("TruncatedImageError")
            expect(dead.locator(".reason")).to_contain_text("truncated")
            expect(page.locator("#m-dead")).to_have_text("1")

            # a few more real photos at once, for the charts and the screenshot
            page.set_input_files("#file-input", [str(files / n) for n in more])
            for name in more:
                page.locator(f'.card[data-name="{name}"]').wait_for(timeout=4 * CARD_TIMEOUT_MS)
            expect(page.locator("#m-rows")).to_have_text(str(1 + len(more)))
            expect(page.locator("#m-loads")).to_have_text("1")
            page.wait_for_timeout(1500)  # one more metrics tick for the charts
            shot = page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        finally:
            browser.close()
    print(f"chelsea.jpg: upload to card on the page in {card_s:.2f} s")
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    if not SCREENSHOT.exists() or os.environ.get("BUILDFLOW_UPDATE_SCREENSHOT") == "1":
        _save_small_png(shot, SCREENSHOT)
    assert run.stop() == 0, run.output
