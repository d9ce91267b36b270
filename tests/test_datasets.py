import filecmp
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import utils.image
from datasets import PairedDataset, input_images, synthetic
from datasets.paired import random_crop_flip_rotate
from datasets.synthetic import main as synthetic_main
from datasets.synthetic import make_synthetic_dataset
from utils.config import load_config
from utils.errors import DataError
from utils.image import (
    from_model_range,
    image_size,
    list_images,
    read_rgb,
    to_model_range,
    write_rgb,
)

from .helpers import REPO, bomb_png

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make_split(root: Path, gt: dict[str, np.ndarray], hazy: dict[str, np.ndarray]) -> Path:
    for sub, imgs in (("GT", gt), ("hazy", hazy)):
        (root / "test" / sub).mkdir(parents=True, exist_ok=True)
        for name, img in imgs.items():
            write_rgb(root / "test" / sub / name, img)
    return root


def _inverse_pair(root: Path, h: int, w: int) -> tuple[Path, np.ndarray]:
    """One pair whose hazy image is 255 - GT, so any misaligned crop is detectable."""
    gt = _noise(h, w)
    return _make_split(root, {"a.png": gt}, {"a.png": 255 - gt}), gt


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (from_model_range(t) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    flips = [img, np.flip(img, axis=1)]
    return [np.rot90(f, k) for f in flips for k in range(4)]


# --- utils/image.py ---------------------------------------------------------------------


def test_read_rgb_returns_rgb_order(tmp_path):
    bgr_red = np.zeros((4, 5, 3), np.uint8)
    bgr_red[..., 2] = 255
    cv2.imwrite(str(tmp_path / "red.png"), bgr_red)
    assert read_rgb(tmp_path / "red.png")[0, 0].tolist() == [255, 0, 0]


def test_write_rgb_roundtrip_from_array_and_tensor(tmp_path):
    img = _noise(7, 9)
    write_rgb(tmp_path / "deep" / "dir" / "a.png", img)
    assert np.array_equal(read_rgb(tmp_path / "deep" / "dir" / "a.png"), img)
    tensor = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None]
    write_rgb(tmp_path / "b.png", tensor)
    assert np.array_equal(read_rgb(tmp_path / "b.png"), img)
    with pytest.raises(ValueError, match="float tensor"):
        write_rgb(tmp_path / "c.png", torch.zeros(4, 5, 3))


def test_model_range_roundtrip_clamps():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(from_model_range(to_model_range(x)), x)
    assert from_model_range(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]


def test_read_rgb_converts_odd_formats_with_a_warning(tmp_path):
    gray = _noise(6, 6)[..., 0]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    with pytest.warns(UserWarning, match="gray.png.*grayscale"):
        assert np.array_equal(read_rgb(tmp_path / "gray.png"), np.stack([gray] * 3, axis=-1))

    bgra = np.dstack([_noise(6, 6), np.full((6, 6), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    with pytest.warns(UserWarning, match="rgba.png.*alpha dropped"):
        assert np.array_equal(read_rgb(tmp_path / "rgba.png"), bgra[..., 2::-1])

    cv2.imwrite(str(tmp_path / "deep.png"), np.full((6, 6, 3), 65535, np.uint16))
    with pytest.warns(UserWarning, match="deep.png.*16-bit"):
        assert (read_rgb(tmp_path / "deep.png") == 255).all()


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_applied_as_the_authors_reader_does(tmp_path, suffix):
    stored = _noise(20, 30)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}{suffix}"
        Image.fromarray(stored).save(path, exif=exif, quality=100)
        upright = cv2.imread(str(path))[..., ::-1]  # cv2.imread applies the orientation
        assert upright.shape[:2] == ((20, 30) if orientation < 5 else (30, 20))
        assert np.array_equal(read_rgb(path), upright), orientation
        assert image_size(path) == upright.shape[:2], orientation


def test_read_rgb_errors_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for name in ("empty.png", "junk.png"):
        with pytest.raises(ValueError, match=name):
            read_rgb(tmp_path / name)
    with pytest.raises(DataError, match=r"missing\.png"):
        read_rgb(tmp_path / "missing.png")


def test_sixteen_bit_samples_round_to_the_nearest_eight_bit_value(tmp_path):
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256, 1).repeat(3, axis=2)
    cv2.imwrite(str(tmp_path / "every.png"), every)
    with pytest.warns(UserWarning, match="16-bit"):
        got = read_rgb(tmp_path / "every.png")
    assert np.array_equal(got, np.round(every / 257).astype(np.uint8))


def test_a_decompression_bomb_is_refused_by_its_header_at_no_memory_cost(tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 30000, 30000)  # 900 MP in about 110 kB
    for read in (read_rgb, image_size):
        with pytest.raises(DataError, match=r"bomb\.png: refused before decoding"):
            read(bomb)
    # The peak memory of a fresh process that is refused the file.
    code = (
        "import resource, sys\n"
        "from utils.image import read_rgb\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    read_rgb(sys.argv[1])\nexcept ValueError:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(bomb)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 50 * 1024  # KiB


def test_an_image_that_would_not_fit_in_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    root = _make_split(tmp_path, {"a.png": _noise(64, 48)}, {"a.png": _noise(64, 48)})
    monkeypatch.setattr(utils.image, "available_memory", lambda device: 20_000)
    with pytest.raises(MemoryError, match=r"48x64 pixels.*decoding it needs"):
        read_rgb(root / "test" / "hazy" / "a.png")
    with pytest.raises(DataError, match=r"a\.png.*48x64 pixels"):
        PairedDataset(root, "test", "test")


@pytest.mark.parametrize("orientation", [1, 6])
def test_max_side_decodes_a_jpeg_at_reduced_size(tmp_path, monkeypatch, orientation):
    smooth = cv2.resize(_noise(8, 12), (600, 400), interpolation=cv2.INTER_CUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth).save(path, exif=exif, quality=95)
    full = read_rgb(path)
    flags = []
    decode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda data, f: flags.append(f) or decode(data, f))
    got = read_rgb(path, max_side=150)
    h, w = (100, 150) if orientation == 1 else (150, 100)
    assert got.shape == (h, w, 3) and full.shape == (4 * h, 4 * w, 3)
    assert flags == [cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION]
    shrunk = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(got - shrunk).mean() < 2  # what decoding in full, then shrinking, gives


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]


# --- PairedDataset ----------------------------------------------------------------------


def test_pairs_by_name_rgb_in_model_range(tmp_path):
    imgs = {n: _noise(10, 12, seed=i) for i, n in enumerate(("b.png", "a.png"))}
    root = _make_split(tmp_path, imgs, {n: 255 - im for n, im in imgs.items()})
    ds = PairedDataset(root, "test", "test")
    assert ds.names == ["a.png", "b.png"]
    assert [p.name for p in ds.hazy_paths] == ds.names
    for i, name in enumerate(ds.names):
        sample = ds[i]
        assert sample["name"] == name
        assert sample["gt"].dtype == torch.float32 and sample["gt"].shape == (3, 10, 12)
        assert np.array_equal(_to_uint8(sample["gt"]), imgs[name])
        assert np.array_equal(_to_uint8(sample["hazy"]), 255 - imgs[name])
        assert sample["gt"].min() >= -1 and sample["gt"].max() <= 1


def test_train_crops_are_aligned_and_inside_the_image(tmp_path):
    root, gt = _inverse_pair(tmp_path, 20, 26)
    ds = PairedDataset(root, "test", "train", patch_size=8, only_h_flip=True)
    random.seed(0)
    for _ in range(20):
        s = ds[0]
        assert s["gt"].shape == s["hazy"].shape == (3, 8, 8)
        assert torch.allclose(s["hazy"], -s["gt"], atol=1e-6)
        crop = _to_uint8(s["gt"])
        found = [
            (y, x)
            for src in (gt, np.flip(gt, axis=1))
            for y in range(13)
            for x in range(19)
            if np.array_equal(src[y : y + 8, x : x + 8], crop)
        ]
        assert len(found) == 1


@pytest.mark.parametrize(("only_h_flip", "expected"), [(True, {0, 4}), (False, set(range(8)))])
def test_train_flips_and_rotations_follow_settings(tmp_path, only_h_flip, expected):
    root, gt = _inverse_pair(tmp_path, 8, 8)
    ds = PairedDataset(root, "test", "train", patch_size=8, only_h_flip=only_h_flip)
    variants = _dihedral(gt)
    random.seed(0)
    seen = set()
    for _ in range(64):
        crop = _to_uint8(ds[0]["gt"])
        seen |= {i for i, v in enumerate(variants) if np.array_equal(v, crop)}
    assert seen == expected


def test_edge_decay_snaps_crops_to_borders(tmp_path):
    root, gt = _inverse_pair(tmp_path, 20, 26)
    ds = PairedDataset(root, "test", "train", patch_size=8, edge_decay=10.0, only_h_flip=True)
    random.seed(0)
    for _ in range(20):
        crop = _to_uint8(ds[0]["gt"])
        corners = [
            src[y : y + 8, x : x + 8]
            for src in (gt, np.flip(gt, axis=1))
            for y in (0, 12)
            for x in (0, 18)
        ]
        assert any(np.array_equal(c, crop) for c in corners)


def test_valid_and_test_modes_are_deterministic(tmp_path):
    root, gt = _inverse_pair(tmp_path, 21, 30)
    valid = PairedDataset(root, "test", "valid", patch_size=8)
    assert np.array_equal(_to_uint8(valid[0]["gt"]), gt[6:14, 11:19])
    assert torch.equal(valid[0]["hazy"], valid[0]["hazy"])
    test = PairedDataset(root, "test", "test", patch_size=8)
    assert np.array_equal(_to_uint8(test[0]["gt"]), gt)


def test_small_images_are_reflect_padded(tmp_path):
    root, gt = _inverse_pair(tmp_path, 9, 12)
    s = PairedDataset(root, "test", "valid", patch_size=16)[0]
    assert s["gt"].shape == (3, 16, 16)
    assert np.array_equal(_to_uint8(s["gt"])[3:12, 2:14], gt)
    assert torch.allclose(s["hazy"], -s["gt"], atol=1e-6)
    assert PairedDataset(root, "test", "train", patch_size=16)[0]["gt"].shape == (3, 16, 16)


def _with_text(root, text_features):
    ds = PairedDataset(root, "test", "test")
    ds.set_text_features(text_features)
    return ds


def test_text_features_looked_up_by_name(tmp_path):
    root, _ = _inverse_pair(tmp_path, 8, 8)
    feat = torch.arange(4.0)
    s = _with_text(root, {"a.png": feat})[0]
    assert torch.equal(s["text"], feat.reshape(1, 4))
    with pytest.raises(ValueError, match=r"no text feature.*a\.png"):
        _with_text(root, {"other.png": feat})


def test_all_split_problems_reported_together(tmp_path):
    img = _noise(8, 8)
    root = _make_split(
        tmp_path,
        {"ok.png": img, "gt_only.png": img, "ext.png": img, "size.png": img},
        {"ok.png": img, "hazy_only.png": img, "ext.jpg": img, "size.png": _noise(8, 9)},
    )
    (root / "test" / "GT" / "bad.png").write_bytes(b"junk")
    (root / "test" / "hazy" / "bad.png").write_bytes(b"junk")
    with pytest.raises(ValueError) as info:
        PairedDataset(root, "test", "test")
    msg = str(info.value)
    for expected in (
        "gt_only.png",
        "hazy_only.png",
        "including the extension",
        "ext.jpg",
        "bad.png",
        "unreadable",
        "size.png",
        "hazy 9x8, GT 8x8",
    ):
        assert expected in msg


@pytest.mark.parametrize("missing", ["split", "hazy"])
def test_missing_folders_named(tmp_path, missing):
    root, _ = _inverse_pair(tmp_path, 8, 8)
    if missing == "hazy":
        for p in (root / "test" / "hazy").iterdir():
            p.unlink()
        (root / "test" / "hazy").rmdir()
    split = "nope" if missing == "split" else "test"
    with pytest.raises(ValueError, match=f"{missing} folder not found"):
        PairedDataset(root, split, "test")


def test_a_split_of_hazy_images_only_opens_without_gt_and_a_half_paired_one_does_not(tmp_path):
    root = _make_split(tmp_path, {}, {"a.png": _noise(8, 9), "b.jpg": _noise(6, 5, seed=1)})
    (root / "test" / "GT").rmdir()
    ds = PairedDataset(root, "test", "test", ground_truth=False)
    assert ds.names == ["a.png", "b.jpg"] and ds.gt_paths is None
    sample = ds[0]
    assert "gt" not in sample and sample["hazy"].shape == (3, 8, 9)
    assert np.array_equal(_to_uint8(sample["hazy"]), _noise(8, 9))
    with pytest.raises(DataError, match="GT folder not found"):
        PairedDataset(root, "test", "test")
    _make_split(root, {"a.png": _noise(8, 9)}, {})
    with pytest.raises(DataError, match=r"1 image\(s\) without a GT counterpart: b\.jpg"):
        PairedDataset(root, "test", "test")


def test_bad_mode_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        PairedDataset(tmp_path, "test", "training")


# Seeded draws of the training augmentation, as (top, left, flipped, quarter turns), on a
# 12 x 20 image with 8 px patches and edge_decay 0.5: the authors' augment() gives these for
# random.seed(7), because it draws from `random` in the same order.
AUTHORS_DRAWS = {
    False: [
        (0, 0, 0, 0),
        (0, 3, 0, 0),
        (0, 8, 1, 0),
        (0, 10, 0, 3),
        (0, 0, 1, 3),
        (0, 8, 0, 0),
        (1, 8, 0, 0),
        (3, 6, 1, 3),
    ],
    True: [
        (0, 0, 0, 0),
        (0, 0, 0, 0),
        (4, 3, 0, 0),
        (0, 1, 0, 0),
        (4, 9, 1, 0),
        (0, 0, 1, 0),
        (4, 12, 0, 0),
        (0, 8, 0, 0),
    ],
}


def _draws(n: int, h: int, w: int, size: int, **kwargs) -> list[tuple[int, int, int, int]]:
    """n augmentations of an image whose pixels hold their own (y, x), decoded to
    (top, left, flipped, quarter turns)."""
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), axis=-1)
    grid = coords[:size, :size]
    # The first two pixels of a crop, relative to its top-left, tell its flip and rotation.
    variants = [np.rot90(c, k, (0, 1)) for c in (grid, np.flip(grid, 1)) for k in range(4)]
    lookup = {v[0, :2].tobytes(): (i // 4, i % 4) for i, v in enumerate(variants)}
    draws = []
    for _ in range(n):
        (out,) = random_crop_flip_rotate([coords], size, **kwargs)
        top, left = out[..., 0].min(), out[..., 1].min()
        flip, k = lookup[(out[0, :2] - (top, left)).tobytes()]
        assert np.array_equal(out, variants[4 * flip + k] + (top, left))
        draws.append((int(top), int(left), flip, k))
    return draws


def _frequency(outcomes: list, accept) -> float:
    return sum(map(accept, outcomes)) / len(outcomes)


@pytest.mark.parametrize("only_h_flip", [False, True])
def test_seeded_augmentation_draws_like_the_authors(only_h_flip):
    random.seed(7)
    assert (
        _draws(8, 12, 20, 8, edge_decay=0.5, only_h_flip=only_h_flip) == AUTHORS_DRAWS[only_h_flip]
    )


def test_crop_positions_flips_and_rotations_are_uniform():
    random.seed(0)
    draws = _draws(2000, 12, 15, 8)
    # 5 x 8 positions, 2 flips, 4 rotations; each count is within 5 sigma of its expectation.
    for axis, n in ((0, 5), (1, 8)):
        for pos in range(n):
            assert abs(_frequency(draws, lambda d, a=axis, p=pos: d[a] == p) - 1 / n) < 0.05
    assert abs(_frequency(draws, lambda d: d[2] == 1) - 0.5) < 0.06
    for k in range(4):
        assert abs(_frequency(draws, lambda d, k=k: d[3] == k) - 0.25) < 0.05
    random.seed(0)
    assert {d[3] for d in _draws(200, 12, 15, 8, only_h_flip=True)} == {0}


def test_edge_decay_snaps_to_both_borders_with_the_protocols_probability():
    """P(snap) = size / side * edge_decay on each axis; a snap picks either border."""
    random.seed(0)
    draws = _draws(4000, 16, 40, 8, edge_decay=1.5, only_h_flip=True)
    # A crop also touches a border by chance: p + (1 - p) * 2 / (side - size + 1).
    for axis, side in ((0, 16), (1, 40)):
        p = 8 / side * 1.5
        on_border = p + (1 - p) * 2 / (side - 8 + 1)
        for border in (0, side - 8):
            freq = _frequency(draws, lambda d, a=axis, b=border: d[a] == b)
            assert abs(freq - on_border / 2) < 0.03, (axis, border, freq)
    random.seed(0)
    draws = _draws(2000, 16, 40, 8, edge_decay=0.0, only_h_flip=True)
    assert abs(_frequency(draws, lambda d: d[0] in (0, 8)) - 2 / 9) < 0.04


# Reflect padding to 8 px, centred (an odd missing count puts the extra one after).
REFLECTED = {5: [1, 0, 1, 2, 3, 4, 3, 2], 6: [1, 0, 1, 2, 3, 4, 5, 4], 7: [0, 1, 2, 3, 4, 5, 6, 5]}


@pytest.mark.parametrize(("h", "w"), [(20, 5), (5, 20), (20, 6), (6, 20), (20, 7), (7, 20)])
def test_an_image_short_on_one_side_is_padded_on_that_side_only(tmp_path, h, w):
    root, gt = _inverse_pair(tmp_path, h, w)
    padded = gt[REFLECTED.get(h, list(range(h)))][:, REFLECTED.get(w, list(range(w)))]
    valid = PairedDataset(root, "test", "valid", patch_size=8)[0]
    centre = padded[6:14] if h == 20 else padded[:, 6:14]
    assert np.array_equal(_to_uint8(valid["gt"]), centre)
    assert torch.allclose(valid["hazy"], -valid["gt"], atol=1e-6)
    train = PairedDataset(root, "test", "train", patch_size=8, only_h_flip=True)
    random.seed(0)
    for _ in range(10):
        crop = _to_uint8(train[0]["gt"])
        windows = [padded[i : i + 8] if h == 20 else padded[:, i : i + 8] for i in range(13)]
        assert any(np.array_equal(c, crop) for win in windows for c in (win, np.flip(win, 1)))
    assert PairedDataset(root, "test", "test", patch_size=8)[0]["gt"].shape == (3, h, w)


@pytest.mark.parametrize("patch_size", [0, -8])
def test_patch_size_must_be_positive(tmp_path, patch_size):
    root, _ = _inverse_pair(tmp_path, 8, 8)
    with pytest.raises(ValueError, match=rf"patch_size must be positive, got {patch_size}"):
        PairedDataset(root, "test", "valid", patch_size=patch_size)
    assert PairedDataset(root, "test", "valid", patch_size=1)[0]["gt"].shape == (3, 1, 1)


@pytest.mark.parametrize(("n", "end"), [(20, "18.png, 19.png"), (21, "19.png ... and 1 more")])
def test_long_name_lists_are_cut_after_twenty(tmp_path, n, end):
    img = _noise(4, 4)
    names = {f"{i:02d}.png": img for i in range(n)}
    root = _make_split(tmp_path, {"ok.png": img}, {"ok.png": img, **names})
    with pytest.raises(ValueError) as info:
        PairedDataset(root, "test", "test")
    problem = str(info.value).splitlines()[1]
    assert problem.startswith(f"  - {n} image(s) without a GT counterpart: 00.png, 01.png, ")
    assert problem.endswith(end)


def test_split_problems_are_listed_one_per_line(tmp_path):
    img = _noise(8, 8)
    root = _make_split(
        tmp_path,
        {"ok.png": img, "gt_only.png": img, "ext.png": img, "size.png": img},
        {"ok.png": img, "hazy_only.png": img, "ext.jpg": img, "size.png": _noise(7, 9)},
    )
    write_rgb(root / "test" / "GT" / "size.png", _noise(6, 8))
    with pytest.raises(ValueError) as info:
        PairedDataset(root, "test", "test")
    hint = "(names must match including the extension)"
    assert str(info.value).splitlines() == [
        f"invalid dataset split {root / 'test'}:",
        f"  - 2 image(s) without a GT counterpart {hint}: ext.jpg, hazy_only.png",
        f"  - 2 image(s) without a hazy counterpart {hint}: ext.png, gt_only.png",
        "  - 1 pair(s) with different GT/hazy sizes: size.png (hazy 9x7, GT 8x6)",
    ]


def test_a_split_without_hazy_images_lists_the_unmatched_gt(tmp_path):
    root = _make_split(tmp_path, {"a.png": _noise(4, 4), "b.png": _noise(4, 4)}, {})
    with pytest.raises(ValueError) as info:
        PairedDataset(root, "test", "test")
    assert str(info.value).splitlines()[1:] == [
        "  - 2 image(s) without a hazy counterpart: a.png, b.png"
    ]


def test_image_sizes_are_known_without_loading(tmp_path):
    root = _make_split(tmp_path, {"a.png": _noise(5, 7)}, {"a.png": _noise(5, 7)})
    assert PairedDataset(root, "test", "test").sizes == {"a.png": (5, 7)}


def test_defaults_are_the_authors_loader(tmp_path):
    """The authors' PairLoader: 256 px patches, no edge decay, flips and rotations."""
    root, _ = _inverse_pair(tmp_path, 8, 8)
    ds = PairedDataset(root, "test", "train")
    assert (ds.patch_size, ds.edge_decay, ds.only_h_flip) == (256, 0.0, False)


def test_an_empty_split_is_named(tmp_path):
    for sub in ("GT", "hazy"):
        (tmp_path / "test" / sub).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images in .*GT or .*hazy"):
        PairedDataset(tmp_path, "test", "test")


def test_a_file_changed_after_opening_is_named_when_loaded(tmp_path):
    root, _ = _inverse_pair(tmp_path, 8, 8)
    ds = PairedDataset(root, "test", "test")
    write_rgb(root / "test" / "GT" / "a.png", _noise(8, 9))
    with pytest.raises(ValueError, match=r"a\.png: hazy \(8, 8, 3\) and GT \(8, 9, 3\)"):
        ds[0]


def test_verify_pixels_names_every_undecodable_file(tmp_path):
    img = _noise(16, 16)
    names = ["a.png", "b.png", "c.png"]
    root = _make_split(tmp_path, dict.fromkeys(names, img), dict.fromkeys(names, img))
    ds = PairedDataset(root, "test", "test")
    ds.verify_pixels(workers=1)
    for name in ("a.png", "c.png"):
        path = root / "test" / "hazy" / name
        path.write_bytes(path.read_bytes()[:60])  # the header survives, the pixels do not
    ds = PairedDataset(root, "test", "test")
    with pytest.raises(
        ValueError, match=r"2 undecodable image\(s\): .*hazy/a\.png, .*hazy/c\.png$"
    ):
        ds.verify_pixels(workers=2)


def test_text_features_become_float32_rows(tmp_path):
    root, _ = _inverse_pair(tmp_path, 8, 8)
    feat = torch.arange(6, dtype=torch.float64).requires_grad_()
    s = _with_text(root, {"a.png": feat})[0]
    assert s["text"].dtype == torch.float32 and not s["text"].requires_grad
    assert s["text"].tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    s = _with_text(root, {"a.png": [[0.5, 1.5]]})[0]
    assert s["text"].tolist() == [[0.5, 1.5]]


# --- input images of predict.py --------------------------------------------------------


def test_input_images(tmp_path):
    write_rgb(tmp_path / "in" / "a.png", _noise(5, 6))
    write_rgb(tmp_path / "in" / "b.jpg", _noise(7, 8))
    (tmp_path / "in" / "readme.txt").write_text("x")
    write_rgb(tmp_path / "c.png", _noise(3, 4))
    with pytest.warns(UserWarning, match="readme.txt"):
        paths = input_images([tmp_path / "in", tmp_path / "c.png"])
    assert [p.name for p in paths] == ["a.png", "b.jpg", "c.png"]
    assert paths[1] == (tmp_path / "in" / "b.jpg").resolve()

    write_rgb(tmp_path / "other" / "a.png", _noise(5, 6))
    with pytest.raises(DataError, match="share a name"):
        input_images([tmp_path / "in" / "a.png", tmp_path / "other" / "a.png"])
    with pytest.raises(DataError, match="missing"):
        input_images(tmp_path / "missing")


# --- synthetic data ---------------------------------------------------------------------


def test_synthetic_dataset_is_deterministic_and_loadable(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", 5, 2, size=((31, 45), (33, 47)), seed=3)
    b = make_synthetic_dataset(tmp_path / "b", 5, 2, size=((31, 45), (33, 47)), seed=3)
    c = make_synthetic_dataset(tmp_path / "c", 5, 2, size=((31, 45), (33, 47)), seed=4)
    for split, n in (("train", 5), ("test", 2)):
        for sub in ("GT", "hazy"):
            names = [p.name for p in list_images(a / split / sub)]
            assert len(names) == n
            match, mismatch, errors = filecmp.cmpfiles(
                a / split / sub, b / split / sub, names, shallow=False
            )
            assert match == names and not mismatch and not errors
    assert not filecmp.cmp(a / "train/hazy/0000.png", c / "train/hazy/0000.png", shallow=False)

    ds = PairedDataset(a, "train", "test")
    sizes = {tuple(ds[i]["gt"].shape[1:]) for i in range(len(ds))}
    assert len(sizes) > 1 and any(h % 2 or w % 2 for h, w in sizes)
    for i in range(len(ds)):
        s = ds[i]
        # Haze adds airlight: the hazy image is brighter on average and differs from GT.
        assert s["hazy"].mean() > s["gt"].mean()


def test_synthetic_cli(tmp_path, capsys):
    assert synthetic_main(["--out", str(tmp_path / "d"), "--train", "2", "--test", "1"]) == 0
    assert len(list_images(tmp_path / "d" / "train" / "hazy")) == 2
    assert len(list_images(tmp_path / "d" / "test" / "GT")) == 1
    assert "2 train" in capsys.readouterr().out


def test_synthetic_cli_refuses_a_folder_that_is_not_empty(tmp_path):
    mine = tmp_path / "d" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic_main(["--out", str(tmp_path / "d"), "--train", "1", "--test", "1"])
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]


def test_the_command_and_the_quickstart_generate_the_same_data(tmp_path, monkeypatch):
    calls = []

    def record(root, *args):
        calls.append(args)
        Path(root).mkdir(parents=True)

    monkeypatch.setattr(synthetic, "make_synthetic_dataset", record)
    for where in ("cli", "quickstart"):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        if where == "cli":
            synthetic_main([])
        else:
            synthetic.generate_if_configured(load_config(QUICKSTART).data)
        assert (tmp_path / where / synthetic.DEFAULT_ROOT).is_dir()
    assert len(calls) == 2 and calls[0] == calls[1]


def test_synthetic_data_only_at_the_default_root_and_only_when_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for root in ("data/synth", "elsewhere", str(tmp_path / "data" / "synthetic-typo")):
        synthetic.generate_if_configured(load_config(QUICKSTART, [f"data.root={root}"]).data)
    assert not (tmp_path / "data").exists() and not (tmp_path / "elsewhere").exists()
    (tmp_path / "data" / "synthetic").mkdir(parents=True)
    synthetic.generate_if_configured(load_config(QUICKSTART).data)
    assert not any((tmp_path / "data" / "synthetic").iterdir())


def test_image_folder_inputs_are_deduplicated_and_hidden_files_skipped_silently(tmp_path, recwarn):
    write_rgb(tmp_path / "in" / "a.png", _noise(5, 6))
    write_rgb(tmp_path / "in" / ".a.png", _noise(5, 6))
    (tmp_path / "in" / "sub").mkdir()
    paths = input_images([tmp_path / "in", str(tmp_path / "in" / "a.png"), tmp_path / "in"])
    assert [p.name for p in paths] == ["a.png"]
    assert not recwarn.list
    assert [p.name for p in input_images(str(tmp_path / "in" / "a.png"))] == ["a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no image files \(\.png, \.jpg.*empty"):
        input_images(tmp_path / "empty")


def test_image_folder_problems_name_every_file(tmp_path):
    for folder in ("in", "other"):
        for name in ("a.png", "b.png"):
            write_rgb(tmp_path / folder / name, _noise(4, 4))
    (tmp_path / "in" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"skipping 1 non-image file\(s\): .*notes\.txt"):
        paths = input_images(tmp_path / "in")
    assert [p.name for p in paths] == ["a.png", "b.png"]
    inp, other = (tmp_path / "in").resolve(), (tmp_path / "other").resolve()
    with pytest.raises(DataError) as info:
        input_images([tmp_path / "in" / "a.png", tmp_path / "in" / "b.png", tmp_path / "other"])
    assert str(info.value) == (
        f"different input files share a name: a.png: {inp / 'a.png'}, {other / 'a.png'}; "
        f"b.png: {inp / 'b.png'}, {other / 'b.png'}"
    )
