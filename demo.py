"""A web page to dehaze one photo at a time with a trained model, offline.

    python demo.py --ckpt runs/reside6k-mixcl-s/best.pth            # http://127.0.0.1:7860
    python demo.py --ckpt best.pth --max-side 2048 --port 8080
    DEMO_AUTH=alice:secret python demo.py --ckpt best.pth --max-side 2048 --host 0.0.0.0

Upload a photo or pick an example (synthetic hazy scenes the project draws): the page shows it
before and after on a slider, CLIP's domain with its probabilities (which can be forced to
indoor or outdoor, to see what the guidance does), the time taken and a download of the
full-size PNG. It runs predict.py's path (Dehazer): the PNG equals predict.py's output for the
same photo and settings. Needs `pip install -r requirements-deploy.txt`.

As a service (docs/DEPLOYMENT.md): never a public link unless --share; uploads over
--max-upload-mb and photos over --max-megapixels refused; one photo dehazed at a time,
--queue-size more wait and any more are told the page is busy; uploads and results removed
--keep-seconds after they are written, the work folder when demo.py stops (Ctrl-C, SIGTERM);
a login required with --auth, $DEMO_AUTH or --auth-file (warned about when it serves beyond this
machine without one). Error messages on the page name the upload only, never the server's
paths or memory.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from utils.cli import (
    add_checkpoint_args,
    add_overrides,
    entry_parser,
    parse_before_imports,
    parse_with_overrides,
    positive_int,
    run,
    setup_logging,
)
from utils.errors import TooManyPixelsError, UserError
from utils.extras import require

# Gradio would otherwise report usage and look for a newer version online.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

log = logging.getLogger("demo")

CLIP_CHOICE = "CLIP's guess"
# The example scenes: one per domain, drawn as the synthetic dataset draws them.
EXAMPLE_SIZE = (384, 512)
# System fonts only: the default theme's web fonts cannot load offline and stall the page.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
AUTH_ENV = "DEMO_AUTH"  # USER:PASSWORD, read when neither --auth nor --auth-file is given
# Gradio's folder for uploads and results; demo.py's work folder is made in it when it is set.
TEMP_ENV = "GRADIO_TEMP_DIR"
MAX_MEGAPIXELS = 50  # a 50 MP photo decodes in about 0.5 GB (16-bit RGBA: 0.7 GB)
KEEP_SECONDS = 600  # how long uploads and results stay, so that a result can be downloaded

Logins = list[tuple[str, str]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = entry_parser(__doc__)
    add_overrides(p)
    add_checkpoint_args(p)
    p.add_argument("--max-side", type=positive_int, help="as predict.py --max-side")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--share", action="store_true", help="also serve on a public Gradio link (never without)"
    )
    p.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help=f"require this login; to keep the password off the command line (where other\n"
        f"users of the machine see it), set ${AUTH_ENV}=USER:PASSWORD or use --auth-file",
    )
    p.add_argument(
        "--auth-file",
        metavar="FILE",
        help=f"logins, one USER:PASSWORD per line (used before --auth and ${AUTH_ENV})",
    )
    p.add_argument(
        "--max-upload-mb",
        metavar="MB",
        type=positive_int,
        default=50,
        help="larger uploads are refused (default: 50)",
    )
    p.add_argument(
        "--max-megapixels",
        metavar="MP",
        type=positive_int,
        default=MAX_MEGAPIXELS,
        help=f"photos with more pixels are refused before decoding (default: {MAX_MEGAPIXELS})",
    )
    p.add_argument(
        "--queue-size",
        metavar="N",
        type=positive_int,
        default=8,
        help="requests that wait while one is dehazed; more are told the page is busy\n"
        "(default: 8)",
    )
    p.add_argument(
        "--keep-seconds",
        metavar="S",
        type=positive_int,
        default=KEEP_SECONDS,
        help=f"uploads and results are removed S seconds after they are written\n"
        f"(default: {KEEP_SECONDS})",
    )
    return parse_with_overrides(p, argv)


# The arguments are read first (utils.cli.parse_before_imports), then the machinery.
parse_before_imports(__name__, parse_args)

import numpy as np
import torch

from datasets.synthetic import synthetic_pair
from predict import Dehazer
from utils.image import read_header, read_rgb, write_rgb


class AuthError(UserError, ValueError):
    """A login given to demo.py is not USER:PASSWORD, or its file cannot be read."""


class ServeError(UserError, OSError):
    """The page cannot listen where --host and --port say."""


def _login(text: str, source: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not (sep and user and password):
        raise AuthError(f"{source}: expected USER:PASSWORD with neither part empty")
    return user, password


def read_logins(auth: str | None, auth_file: str | None) -> Logins | None:
    """The (user, password) pairs the page requires, from --auth-file, --auth or $DEMO_AUTH
    (the first given); None: no login."""
    if auth_file:
        try:
            lines = Path(auth_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not a text file"
            raise AuthError(f"cannot read --auth-file {auth_file}: {reason}") from e
        logins = [
            _login(line.strip(), f"{auth_file} line {n}")
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not logins:
            raise AuthError(f"--auth-file {auth_file} holds no USER:PASSWORD line")
        return logins
    if auth:
        return [_login(auth, "--auth")]
    if os.environ.get(AUTH_ENV):
        return [_login(os.environ[AUTH_ENV], f"${AUTH_ENV}")]
    return None


def is_local(host: str) -> bool:
    """Whether only this machine can reach an address (loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def warn_if_open(host: str, share: bool, logins: Logins | None) -> None:
    """Warn when others can reach the page and no login is required."""
    if logins is None and (share or not is_local(host)):
        where = "a public link" if share else host
        warnings.warn(
            f"serving on {where} without a login: anyone who reaches it can use the page and "
            f"this machine's processor; require one with --auth, ${AUTH_ENV} or --auth-file",
            stacklevel=2,
        )


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
    """What the page shows for an upload it cannot dehaze: the upload's name, never the
    server's paths or memory."""


class Page:
    """The page's work: one dehazing per request, each PNG in a folder of its own."""

    def __init__(
        self,
        dehazer: Dehazer,
        max_side: int | None,
        out_dir: Path,
        max_megapixels: int = MAX_MEGAPIXELS,
    ) -> None:
        self.dehazer, self.max_side, self.out_dir = dehazer, max_side, out_dir
        self.max_megapixels = max_megapixels
        self.domains = list(dehazer.cfg.clip.domains) if dehazer.clip is not None else []

    def read(self, file: str | None) -> np.ndarray:
        """The upload as predict.py reads it (EXIF orientation, --max-side, memory check),
        refused before decoding when its header declares more than --max-megapixels."""
        if not file:
            raise DemoError("upload a photo or pick an example first")
        name = Path(file).name
        too_large = (
            f"{name} is too large: this page takes photos of up to {self.max_megapixels} "
            "megapixels; shrink it and upload it again"
        )
        try:
            if read_header(file).pixels > self.max_megapixels * 1e6:
                raise DemoError(too_large)
            return self.dehazer.read(file, self.max_side)
        except TooManyPixelsError as e:  # over Pillow's limit
            log.warning("refused an upload: %s", e)
            raise DemoError(too_large) from e
        except MemoryError as e:
            log.warning("refused an upload: %s", e)
            raise DemoError(
                f"{name} is too large for the memory this server has free now; "
                "upload a smaller photo or try again later"
            ) from e
        except ValueError as e:
            log.warning("refused an upload: %s", e)
            raise DemoError(f"{name} is not an image this demo can read (PNG, JPEG, ...)") from e

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


def cleaning_period(keep_seconds: int) -> int:
    """How often files older than `keep_seconds` are looked for: each goes at most 10% late."""
    return max(1, keep_seconds // 10)


def build_page(page: Page, examples: list[Path], keep_seconds: int):
    """The Gradio Blocks of the page (not launched); the files Gradio writes for it (uploads,
    results) are deleted `keep_seconds` after they were written."""
    gr = require("gradio", "demo.py")

    def dehaze(file: str | None, choice: str) -> tuple:
        try:
            return page.run(file, choice)
        except DemoError as e:
            raise gr.Error(str(e), print_exception=False) from e

    name = page.dehazer.cfg.model.name
    with gr.Blocks(
        analytics_enabled=False,
        title=f"{name} dehazing",
        delete_cache=(cleaning_period(keep_seconds), keep_seconds),
    ) as blocks:
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


def sweep(folder: Path, age: float) -> None:
    """Remove what Gradio's own deletion leaves in its cache `folder` once older than `age`
    seconds: the emptied folders of the files it deleted, and loose files at the top (uploads
    a client broke off, and the empty file that gr.File(type="filepath") creates there on every
    request and never deletes)."""
    limit = time.time() - age
    for entry in os.scandir(folder):
        try:
            if entry.stat(follow_symlinks=False).st_mtime > limit:
                continue
            if entry.is_dir(follow_symlinks=False):
                os.rmdir(entry.path)  # only when empty
            else:
                os.unlink(entry.path)
        except OSError:  # not empty, or gone already
            continue


def sweeper(folder: Path, every: float, age: float) -> Callable:
    """A lifespan for the page's app: `sweep` every `every` seconds while it serves."""

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                await asyncio.to_thread(sweep, folder, age)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()

    return lifespan


class Service:
    """The served page and its work folder (the examples, Gradio's uploads and results),
    which `close` removes. Gradio writes in $GRADIO_TEMP_DIR, set to the work folder's
    `cache` while the page serves."""

    def __init__(self) -> None:
        self.saved_temp = os.environ.get(TEMP_ENV)
        self.work = Path(tempfile.mkdtemp(prefix="dehaze-demo-", dir=self.saved_temp))
        self.cache = self.work / "cache"
        self.cache.mkdir()
        os.environ[TEMP_ENV] = str(self.cache)
        self.blocks: Any = None
        self.url = ""

    def start(self, args: argparse.Namespace, dehazer: Dehazer, logins: Logins | None) -> None:
        """Serve the page (returns at once): one request dehazed at a time."""
        # PNGs written in Gradio's cache are served from there, not copied, and deleted with it.
        page = Page(dehazer, args.max_side, self.cache, args.max_megapixels)
        examples = write_examples(self.work / "examples")
        self.blocks = build_page(page, examples, args.keep_seconds)
        self.blocks.queue(max_size=args.queue_size, default_concurrency_limit=1)
        sweeping = sweeper(self.cache, cleaning_period(args.keep_seconds), args.keep_seconds)
        try:
            _, self.url, _ = self.blocks.launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share,
                auth=logins,
                max_file_size=args.max_upload_mb * 2**20,
                show_error=False,  # other exceptions show as "Error", never their text
                prevent_thread_lock=True,
                allowed_paths=[str(self.work / "examples")],
                app_kwargs={"lifespan": sweeping},
                theme=theme(),
                footer_links=[],
                quiet=True,  # Gradio's hints name its own arguments, not demo.py's flags
            )
        except OSError as e:  # Gradio's message names its own arguments too
            raise ServeError(
                f"cannot serve on {args.host}:{args.port}: the port is taken or the address is "
                "not this machine's; choose another --port or --host"
            ) from e
        shared = f" and {self.blocks.share_url}" if self.blocks.share_url else ""
        print(f"demo.py: serving on {self.url}{shared}", flush=True)

    def wait(self) -> None:
        """Serve until the server stops or the process is interrupted."""
        while self.blocks.is_running:
            time.sleep(0.2)

    def close(self) -> None:
        """Stop serving and remove the work folder."""
        if self.blocks is not None:
            self.blocks.close(verbose=False)
        if self.saved_temp is None:
            os.environ.pop(TEMP_ENV, None)
        else:
            os.environ[TEMP_ENV] = self.saved_temp
        shutil.rmtree(self.work, ignore_errors=True)


def launch(args: argparse.Namespace) -> Service:
    """Load the model, write the examples and serve the page (returns at once)."""
    logins = read_logins(args.auth, args.auth_file)
    warn_if_open(args.host, args.share, logins)
    dehazer = Dehazer.load(args.ckpt, args.model, args.config, args.overrides)
    service = Service()
    try:
        service.start(args, dehazer, logins)
    except BaseException:
        service.close()
        raise
    return service


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    require("gradio", "demo.py")
    args = parse_args(argv)
    setup_logging(args.quiet)
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in stops}
    signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C, cleaning up
    try:
        service = launch(args)
        try:
            service.wait()
        finally:
            for s in stops:  # a second Ctrl-C must not cut the cleaning short
                signal.signal(s, signal.SIG_IGN)
            service.close()
    except KeyboardInterrupt:
        print("demo.py stopped")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    run(main)
