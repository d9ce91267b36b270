"""utils/files.py: files written for the user are complete, never written through a link."""

import os
import stat

import numpy as np
import pytest

from utils.files import escape_name, existing, unescape_name, write_atomic
from utils.image import write_rgb


def test_a_dangling_link_is_replaced_and_its_target_never_written(tmp_path):
    outside = tmp_path / "outside" / "victim.png"
    outside.parent.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(outside)
    assert existing([out / "a.png", out / "b.png"]) == [out / "a.png"]
    write_rgb(out / "a.png", np.zeros((4, 5, 3), np.uint8))
    assert not os.path.lexists(outside)
    assert (out / "a.png").is_file() and not (out / "a.png").is_symlink()


def test_a_link_to_a_users_file_is_replaced_and_the_file_kept(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    (tmp_path / "result.json").symlink_to(mine)
    write_atomic(tmp_path / "result.json", lambda f: f.write(b"{}"))
    assert mine.read_text() == "my notes"
    assert (tmp_path / "result.json").read_bytes() == b"{}"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_written_file_gets_the_permissions_of_any_new_file(tmp_path):
    write_atomic(tmp_path / "a.bin", lambda f: f.write(b"x"))
    (tmp_path / "b.bin").write_bytes(b"x")
    mode = stat.S_IMODE
    assert mode((tmp_path / "a.bin").stat().st_mode) == mode((tmp_path / "b.bin").stat().st_mode)


def test_file_names_are_escaped_into_utf8_and_back():
    names = ["a.png", "é.png", "a\\xff.png", "x\\\\y", "line\nbreak.png"]
    names += [os.fsdecode(b"caf\xe9.png"), os.fsdecode(b"\xff\xfe\\x41")]
    for name in names:
        text = escape_name(name)
        text.encode("utf-8")  # valid UTF-8: no surrogate left
        assert unescape_name(text) == name
    assert escape_name(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert escape_name("é.png") == "é.png"
