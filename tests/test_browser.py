"""demo.py in a real headless Chromium: upload, dehaze, download equals predict.py's file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from utils.image import EXIF_ORIENTATION, read_rgb

from .helpers import free_port, load_entry

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("gradio")
demo, predict = load_entry("demo"), load_entry("predict")

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI containers
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # a busy 2-core machine


@pytest.fixture(scope="module")
def demo_url(trained):
    """The page of the tiny trained run, served in this process."""
    args = demo.parse_args(["--ckpt", str(trained / "last.pth"), "--port", str(free_port())])
    service = demo.launch(args)
    yield service.url
    service.close()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_url):
    """A fresh page of its own per test, which must request nothing outside the demo."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    page.on("request", lambda r: outside.append(r.url) if demo_url not in r.url else None)
    yield page
    context.close()
    assert not outside, f"the page requested outside resources: {outside[:5]}"


def open_and_upload(page, url: str, path) -> None:
    page.goto(url)
    page.wait_for_selector("#dehaze")
    page.set_input_files("#photo input[type=file]", str(path))
    # The uploaded file's row (its name is labelled; the text is split into stem and extension).
    # The name in the upload's progress text is gone once the upload ends, however fast.
    page.locator("#photo").get_by_label(path.name, exact=True).wait_for()
    page.click("#dehaze")


def test_the_downloaded_png_equals_predicts_output(page, demo_url, trained, tmp_path):
    """A phone photo stored sideways (EXIF orientation 6): both turn it upright alike."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(rng.integers(0, 256, (45, 71, 3), dtype=np.uint8)).save(photo, exif=exif)

    open_and_upload(page, demo_url, photo)
    page.wait_for_selector("#slider img")
    with page.expect_download() as download:
        page.click("#download")
    got = tmp_path / "downloaded.png"
    download.value.save_as(got)

    predict.main(["--ckpt", str(trained / "last.pth"), str(photo), "--out", str(tmp_path / "p")])
    expected = read_rgb(tmp_path / "p" / "phone.png")
    assert expected.shape == (71, 45, 3)  # upright
    assert np.array_equal(read_rgb(got), expected)
    assert "45x71 px dehazed in" in page.inner_text("#note")


def test_a_file_that_is_not_an_image_shows_the_error(page, demo_url, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    open_and_upload(page, demo_url, notes)
    page.get_by_text("notes.txt is not an image this demo can read").wait_for()
