"""demo.py's work behind the page (the browser tests drive the page itself), its extras, and
what it takes to serve it on a network (tests/test_demo_service.py runs it as a process)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest
import torch

from utils.errors import MissingPackageError, UserError
from utils.extras import require
from utils.image import read_rgb, write_rgb

from .helpers import bomb_png, free_port, load_entry

demo = load_entry("demo")


@pytest.fixture(scope="module")
def page(trained, tmp_path_factory):
    dehazer = sys.modules["predict"].Dehazer.load(trained / "last.pth")
    return demo.Page(dehazer, None, tmp_path_factory.mktemp("outputs"))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    write_rgb(path, torch.rand(3, 37, 50, generator=torch.Generator().manual_seed(3)))
    return path


def test_forcing_a_domain_guides_the_network_with_it(page, photo):
    (hazy, dehazed), probs, note, png = page.run(str(photo), demo.CLIP_CHOICE)
    assert np.array_equal(hazy, read_rgb(photo))
    assert np.array_equal(dehazed, read_rgb(png))
    assert sorted(probs) == ["indoor", "outdoor"] and sum(probs.values()) == pytest.approx(1)
    guess = max(probs, key=probs.get)
    assert "50x37 px dehazed in" in note and note.endswith(f"guided as {guess}")

    other = "indoor" if guess == "outdoor" else "outdoor"
    (_, forced), forced_probs, note, _ = page.run(str(photo), other)
    assert forced_probs == probs  # CLIP's guess is still shown
    assert note.endswith(f"guided as {other}")
    one_hot = torch.tensor([[float(other == d) for d in page.domains]])
    expected = (page.dehazer(read_rgb(photo), one_hot).clamp(0, 1) * 255).round().byte()
    assert np.array_equal(forced, expected.permute(1, 2, 0).numpy())
    assert not np.array_equal(forced, dehazed)


def test_uploads_it_cannot_dehaze_are_named_with_the_way_out(page, photo, tmp_path, monkeypatch):
    with pytest.raises(demo.DemoError, match="upload a photo"):
        page.run(None, demo.CLIP_CHOICE)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(demo.DemoError, match=r"notes\.txt is not an image"):
        page.run(str(notes), demo.CLIP_CHOICE)


def test_too_large_is_said_without_the_servers_memory_or_paths(page, photo, tmp_path, monkeypatch):
    """A visitor learns the photo is too large, and the bound the operator set, nothing more."""
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)  # over Pillow's limit
    wide = bomb_png(tmp_path / "wide.png", 12000, 5000)  # 60 MP: under it, over --max-megapixels
    for path in (bomb, wide):
        with pytest.raises(demo.DemoError) as refused:
            page.run(str(path), demo.CLIP_CHOICE)
        assert str(refused.value) == (
            f"{path.name} is too large: this page takes photos of up to 50 megapixels; "
            "shrink it and upload it again"
        )
    monkeypatch.setattr(sys.modules["predict"], "available_memory", lambda device: 10_000)
    with pytest.raises(demo.DemoError) as refused:
        page.run(str(photo), demo.CLIP_CHOICE)
    message = str(refused.value)
    assert message.startswith("photo.png is too large for the memory this server has free now")
    assert str(tmp_path) not in message and "GiB" not in message
    assert not any(c.isdigit() for c in message)


def test_examples_are_one_synthetic_scene_per_domain(tmp_path):
    examples = demo.write_examples(tmp_path)
    assert [p.name for p in examples] == ["synthetic-indoor.png", "synthetic-outdoor.png"]
    assert all(read_rgb(p).shape == (*demo.EXAMPLE_SIZE, 3) for p in examples)


def test_a_missing_extra_is_one_line_saying_what_to_install():
    with pytest.raises(MissingPackageError, match=r"pip install -r requirements-deploy\.txt"):
        require("no_such_module_here", "demo.py")


def test_a_missing_checkpoint_is_named(tmp_path):
    pytest.importorskip("gradio")
    with pytest.raises(UserError, match=r"missing\.pth"):
        demo.main(["--ckpt", str(tmp_path / "missing.pth")])


@pytest.fixture
def service(trained, monkeypatch):
    """The page served in this process with a login from the environment, a 1 MB upload
    limit, 3 places in the queue and GRADIO_SHARE=true, which it must not obey."""
    gr = pytest.importorskip("gradio")
    tunnels = []
    monkeypatch.setattr(gr.networking, "setup_tunnel", lambda **kwargs: tunnels.append(kwargs))
    monkeypatch.setenv("GRADIO_SHARE", "true")
    monkeypatch.setenv(demo.AUTH_ENV, "alice:secret")
    monkeypatch.delenv(demo.TEMP_ENV, raising=False)
    args = ["--ckpt", str(trained / "last.pth"), "--port", str(free_port())]
    args += ["--max-upload-mb", "1", "--queue-size", "3"]
    service = demo.launch(demo.parse_args(args))
    yield service, tunnels
    service.close()


def test_a_served_page_has_no_public_link_a_login_and_bounds(service, monkeypatch):
    httpx = pytest.importorskip("httpx")
    gradio_client = pytest.importorskip("gradio_client")
    service, tunnels = service
    assert not tunnels and service.blocks.share is False
    assert service.blocks._queue.max_size == 3
    assert service.blocks._queue.default_concurrency_limit == 1
    upload = service.url + "gradio_api/upload"
    assert httpx.post(upload, files={"files": ("a.png", b"x")}).status_code == 401
    with httpx.Client() as client:
        login = {"username": "alice", "password": "secret"}
        assert client.post(service.url + "login", data=login).json() == {"success": True}
        assert client.post(upload, files={"files": ("a.png", b"x" * 2**20)}).status_code == 200
        big = client.post(upload, files={"files": ("a.png", b"x" * (2**20 + 1))})
        assert big.status_code == 413
    assert os.environ[demo.TEMP_ENV] == str(service.work / "cache")  # Gradio's files go there

    def bug(*_):
        raise RuntimeError(f"a bug's message naming {service.work}")

    monkeypatch.setattr(demo.Page, "run", bug)
    client = gradio_client.Client(
        service.url,
        auth=("alice", "secret"),
        verbose=False,
        download_files=False,
        analytics_enabled=False,
    )
    with pytest.raises(gradio_client.exceptions.AppError) as shown:
        client.predict(None, demo.CLIP_CHOICE, api_name="/dehaze")
    assert str(service.work) not in str(shown.value) and "bug" not in str(shown.value)

    service.close()
    assert not service.work.exists()
    assert demo.TEMP_ENV not in os.environ


def test_a_taken_port_is_one_line_and_leaves_no_work_folder(trained, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(demo.TEMP_ENV, raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(demo.ServeError, match=f"127.0.0.1:{port}: the port is taken"):
            demo.main(["--ckpt", str(trained / "last.pth"), "--port", str(port)])
    assert not list(tmp_path.glob("dehaze-demo-*"))
    assert demo.TEMP_ENV not in os.environ


def test_serving_beyond_this_machine_without_a_login_warns(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.delenv(demo.AUTH_ENV, raising=False)
    missing = ["--ckpt", str(tmp_path / "missing.pth")]  # stops before serving
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        alone = f"serving on {host} without a login.*--auth"
        with pytest.warns(UserWarning, match=alone), pytest.raises(UserError, match="missing"):
            demo.main([*missing, "--host", host])
    public = "serving on a public link without a login"
    with pytest.warns(UserWarning, match=public), pytest.raises(UserError, match="missing"):
        demo.main([*missing, "--share"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "serving on")
        for extra in (["--host", "0.0.0.0", "--auth", "a:b"], ["--host", "::1"], []):
            with pytest.raises(UserError):
                demo.main([*missing, *extra])


def test_logins_come_from_the_flag_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(demo.AUTH_ENV, raising=False)
    assert demo.read_logins(None, None) is None
    assert demo.read_logins("alice:pass:word", None) == [("alice", "pass:word")]
    monkeypatch.setenv(demo.AUTH_ENV, "bob:secret")
    assert demo.read_logins(None, None) == [("bob", "secret")]
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may use the page\nalice:one\n\n carol:two \n")
    assert demo.read_logins("ignored:x", str(logins)) == [("alice", "one"), ("carol", "two")]
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(demo.AuthError, match="--auth: expected USER:PASSWORD"):
            demo.read_logins(bad, None)
    logins.write_text("alice:one\nbob\n")
    with pytest.raises(demo.AuthError, match=r"logins\.txt line 2: expected USER:PASSWORD"):
        demo.read_logins(None, str(logins))
    with pytest.raises(demo.AuthError, match=r"cannot read --auth-file .*missing\.txt"):
        demo.read_logins(None, str(tmp_path / "missing.txt"))


def test_the_sweep_removes_what_gradio_leaves_once_it_is_old(tmp_path):
    """Emptied folders and loose files at the top of the cache, once older than the age."""
    old = time.time() - 100
    for name in ("emptied", "in-use", "fresh"):
        (tmp_path / name).mkdir()
    (tmp_path / "in-use" / "result.png").write_bytes(b"png")
    for name in ("tmp-left-by-gr-file", "tmp-upload-in-progress"):
        (tmp_path / name).write_bytes(b"")
    for name in ("emptied", "in-use", "tmp-left-by-gr-file"):
        os.utime(tmp_path / name, (old, old))
    demo.sweep(tmp_path, age=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fresh",
        "in-use",
        "tmp-upload-in-progress",
    ]
    assert (tmp_path / "in-use" / "result.png").exists()
