"""A web page to dehaze one photo at a time with a trained model, offline.

    python demo.py --ckpt runs/reside6k-mixcl-s/best.pth            # http://127.0.0.1:7860
    python demo.py --ckpt best.pth --max-side 2048 --port 8080

Upload a photo or pick an example (synthetic hazy scenes the project draws): the page shows it
before and after on a slider, CLIP's domain with its probabilities (which can be forced to
indoor or outdoor, to see what the guidance does), the time taken and a download of the
full-size PNG. It runs predict.py's path (Dehazer): the PNG equals predict.py's output for the
same photo and settings. Needs `pip install -r requirements-deploy.txt`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from datasets.synthetic import synthetic_pair
from predict import Dehazer
from utils.cli import (
    add_checkpoint_args,
    add_overrides,
    entry_parser,
    parse_with_overrides,
    positive_int,
    run,
    setup_logging,
)
from utils.errors import UserError
from utils.extras import require
from utils.image import read_rgb, write_rgb

# Gradio would otherwise report usage and look for a newer version online.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CLIP_CHOICE = "CLIP's guess"
# The example scenes: one per domain, drawn as the synthetic dataset draws them.
EXAMPLE_SIZE = (384, 512)
# System fonts only: the default theme's web fonts cannot load offline and stall the page.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    add_overrides(p)
    add_checkpoint_args(p)
    p.add_argument("--max-side", type=positive_int, help="as predict.py --max-side")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: local)")
    p.add_argument("--port", type=int, default=7860)
    return parse_with_overrides(p, argv)


def write_examples(folder: Path) -> list[Path]:
    """One hazy synthetic scene per domain, as PNG files in `folder`."""
    found: dict[str, Path] = {}
    seed = 0
    while len(found) < 2:
        _, hazy, domain = synthetic_pair(np.random.default_rng([seed]), *EXAMPLE_SIZE)
        if domain not in found:
            found[domain] = folder / f"synthetic-{domain}.png"
            write_rgb(found[domain], hazy)
        seed += 1
    return [found["indoor"], found["outdoor"]]


class DemoError(UserError):
    """What the page shows for an upload it cannot dehaze."""


class Page:
    """The page's work: one dehazing per request, each PNG in a folder of its own."""

    def __init__(self, dehazer: Dehazer, max_side: int | None, out_dir: Path) -> None:
        self.dehazer, self.max_side, self.out_dir = dehazer, max_side, out_dir
        self.domains = list(dehazer.cfg.clip.domains) if dehazer.clip is not None else []

    def read(self, file: str | None) -> np.ndarray:
        """The upload as predict.py reads it (EXIF orientation, --max-side, memory check)."""
        if not file:
            raise DemoError("upload a photo or pick an example first")
        name = Path(file).name
        try:
            return self.dehazer.read(file, self.max_side)
        except ValueError as e:
            raise DemoError(f"{name} is not an image this demo can read (PNG, JPEG, ...)") from e
        except MemoryError as e:
            raise DemoError(f"{name} is too large: {e} (restart demo.py with it)") from e

    def run(self, file: str | None, choice: str) -> tuple:
        """(hazy, dehazed) for the slider, the domain probabilities, a note and the PNG."""
        img = self.read(file)
        start = time.perf_counter()
        probs = self.dehazer.domain_probs(img)
        used = probs
        if probs is not None and choice in self.domains:
            used = torch.zeros_like(probs)
            used[0, self.domains.index(choice)] = 1
        out = self.dehazer(img, used)
        seconds = time.perf_counter() - start
        png = self.out_dir / uuid.uuid4().hex / f"{Path(file).stem}_dehazed.png"
        write_rgb(png, out)
        label = None
        if probs is not None:
            label = dict(zip(self.domains, probs[0].tolist(), strict=True))
        h, w = img.shape[:2]
        guided = "" if probs is None else f", guided as {self.domains[used.argmax()]}"
        note = f"{w}x{h} px dehazed in {seconds:.2f} s on {self.dehazer.device.type}{guided}"
        return (img, read_rgb(png)), label, note, str(png)


def build_page(page: Page, examples: list[Path]):
    """The Gradio Blocks of the page (not launched)."""
    gr = require("gradio", "demo.py")

    def dehaze(file: str | None, choice: str) -> tuple:
        try:
            return page.run(file, choice)
        except DemoError as e:
            raise gr.Error(str(e), print_exception=False) from e

    name = page.dehazer.cfg.model.name
    with gr.Blocks(analytics_enabled=False, title=f"{name} dehazing") as blocks:
        gr.Markdown(f"## Dehazing with {name}\nUpload a hazy photo or pick an example.")
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="Hazy photo", type="filepath", elem_id="photo")
                choice = gr.Radio(
                    [CLIP_CHOICE, *page.domains],
                    value=CLIP_CHOICE,
                    label="Domain that guides the network",
                    visible=bool(page.domains),
                )
                button = gr.Button("Dehaze", variant="primary", elem_id="dehaze")
                gr.Examples([[str(p)] for p in examples], inputs=[photo], label="Examples")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(
                    label="Hazy | dehazed", type="numpy", format="png", elem_id="slider"
                )
                note = gr.Markdown(elem_id="note")
                domain = gr.Label(label="CLIP's domain", visible=bool(page.domains))
                download = gr.DownloadButton("Download full-size PNG", elem_id="download")
        button.click(dehaze, [photo, choice], [slider, domain, note, download])
    return blocks


def theme():
    gr = require("gradio", "demo.py")
    return gr.themes.Base(font=FONTS, font_mono=MONO_FONTS)


def launch(args: argparse.Namespace, block: bool = True):
    """Load the model, write the examples and serve the page; returns (blocks, url)."""
    dehazer = Dehazer.load(args.ckpt, args.model, args.config, args.overrides)
    work = Path(tempfile.mkdtemp(prefix="dehaze-demo-"))
    page = Page(dehazer, args.max_side, work / "outputs")
    blocks = build_page(page, write_examples(work / "examples"))
    _, url, _ = blocks.launch(
        server_name=args.host,
        server_port=args.port,
        prevent_thread_lock=not block,
        allowed_paths=[str(work)],
        theme=theme(),
        footer_links=[],
        quiet=not block,
    )
    return blocks, url


def main(argv: list[str] | None = None) -> None:
    require("gradio", "demo.py")
    args = parse_args(argv)
    setup_logging(args.quiet)
    launch(args)


if __name__ == "__main__":
    run(main)
