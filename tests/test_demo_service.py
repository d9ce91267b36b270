"""demo.py as a service, in a real process on 127.0.0.1: clients at once are answered or told the
page is busy, a decompression bomb costs no memory, temporary files go, and SIGTERM removes the
work folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from utils.image import write_rgb

from .helpers import REPO, bomb_png, free_port

pytestmark = pytest.mark.browser
gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

KEEP_SECONDS = 3  # --keep-seconds: uploads and results go this long after they are written
QUEUE_SIZE = 2
CLIENTS = 10  # at once: 1 dehazed, QUEUE_SIZE waiting, the others told the page is busy
LOGIN = ("alice", "s3cret:pass")
START_TIMEOUT = 120  # imports and the model on a busy 2-core machine
# The server's resident memory may grow by this much under the load: a 30000x30000 bomb decoded
# would take 900 MB (8-bit gray) before its conversion to RGB.
MEMORY_BOUND = 300 * 2**20


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.2)


def memory_kb(pid: int, key: str) -> int:
    """VmRSS (resident now) or VmHWM (resident at most since the last reset) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    temp: Path  # the server's TMPDIR, where its work folder is made

    def work(self) -> Path:
        (folder,) = self.temp.glob("dehaze-demo-*")
        return folder

    def files(self) -> set[str]:
        return {str(p.relative_to(self.temp)) for p in self.work().rglob("*")}

    def cached(self) -> list[Path]:
        """What Gradio and demo.py keep of uploads and results now."""
        return list((self.work() / "cache").iterdir())


@pytest.fixture
def server(trained, tmp_path) -> Iterator[Server]:
    """`python demo.py` with a login from the environment and GRADIO_SHARE=true, which it
    must ignore; killed at the end if a test left it running."""
    temp = tmp_path / "server-tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "DEMO_AUTH": ":".join(LOGIN), "GRADIO_SHARE": "true"}
    env.pop("GRADIO_TEMP_DIR", None)
    port = free_port()
    command = [
        *(sys.executable, "demo.py", "--ckpt", str(trained / "last.pth"), "--port", str(port)),
        *("--keep-seconds", str(KEEP_SECONDS), "--queue-size", str(QUEUE_SIZE)),
        "speed.autotune=false",
    ]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}/", log, temp)
    try:
        wait_for(
            lambda: proc.poll() is not None or "serving on" in log.read_text(),
            START_TIMEOUT,
            "demo.py to serve",
        )
        assert proc.poll() is None, log.read_text()
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ask(url: str, file: Path, start: threading.Barrier | None = None) -> str:
    """What one client gets for `file`: the page's note, its error, or "busy"."""
    client = gradio_client.Client(
        url, auth=LOGIN, verbose=False, download_files=False, analytics_enabled=False
    )
    if start is not None:
        start.wait()
    try:
        _, _, note, _ = client.predict(
            gradio_client.handle_file(str(file)), "CLIP's guess", api_name="/dehaze"
        )
        return note
    except gradio_client.exceptions.AppError as e:
        return str(e)
    except gradio_client.utils.QueueError:
        return "busy"


def test_clients_at_once_are_answered_or_told_busy_and_leave_nothing(server, tmp_path):
    photo = tmp_path / "photo.png"
    write_rgb(photo, torch.rand(3, 192, 256, generator=torch.Generator().manual_seed(0)))
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)
    assert httpx.get(server.url + "config").status_code == 401  # no login, no page
    assert "192 px dehazed" in ask(server.url, photo)  # first use: one-time allocations
    wait_for(lambda: not server.cached(), 30, "the first request's files to go")
    idle = server.files()  # the examples
    rss = memory_kb(server.proc.pid, "VmRSS")
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    files = [bomb if i % 3 == 0 else photo for i in range(CLIENTS)]
    answers: dict[int, str] = {}
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        answers[i] = ask(server.url, files[i], start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == CLIENTS, "a client got no answer in time"

    expected = {
        photo: "256x192 px dehazed in",
        bomb: "bomb.png is too large: this page takes photos of up to 50 megapixels",
    }
    for i, file in enumerate(files):
        assert answers[i] == "busy" or expected[file] in answers[i], answers[i]
    assert "busy" in answers.values(), answers
    assert any("dehazed in" in a for a in answers.values()), answers
    peak = memory_kb(server.proc.pid, "VmHWM")
    assert (peak - rss) * 1024 < MEMORY_BOUND, f"{(peak - rss) / 1024:.0f} MB more under load"
    wait_for(lambda: server.files() == idle, 30, "uploads and results to be removed")

    work = server.work()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert not work.exists()
    assert "demo.py stopped" in server.log.read_text()
