"""Real-haze evaluation: test.py on splits without ground truth, the metrics of their own
libraries (same numbers as the library's own function on the saved files), and the one-line
errors for a missing library or weight file."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.errors import DataError, MissingPackageError, WeightsError
from utils.image import read_rgb, write_rgb
from utils.quality import ALEXNET, METRICS, load_metric

from .helpers import load_entry

evaluate = load_entry("test")


def needs(module: str) -> None:
    """Skip without `module` on a developer's machine; in CI (.ci/run installs it) fail."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed: CI installs requirements-metrics.txt")
        pytest.skip(f"{module} not installed (pip install -r requirements-metrics.txt)")


def hazy_photos(folder: Path, size: tuple[int, int] = (72, 96)) -> list[str]:
    """Real photos (scikit-image's samples) with uniform synthetic haze, I = J t + A (1 - t),
    as PNGs in `folder`; returns their file names."""
    needs("skimage")
    from skimage import data

    names = []
    for i, photo in enumerate((data.astronaut(), data.coffee(), data.chelsea())):
        clear = cv2.resize(photo, size[::-1], interpolation=cv2.INTER_AREA) / 255.0
        t = 0.5 + 0.1 * i
        hazy = clear * t + 0.9 * (1 - t)
        names.append(f"photo{i}.png")
        write_rgb(folder / names[-1], np.round(hazy * 255).astype(np.uint8))
    return names


def rows_of(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_test_py_scores_a_split_without_gt_as_fade_does_on_the_saved_images(trained, tmp_path):
    needs("pyfade")
    import pyfade

    root = tmp_path / "real"
    hazy_photos(root / "test" / "hazy")
    out = tmp_path / "result"
    cache = f"clip.cache_dir={tmp_path / 'cache'}"
    args = ["--ckpt", str(trained / "best.pth"), "--data-dir", str(root), "--out", str(out)]
    summary = evaluate.main([*args, "--save-images", cache])

    rows = rows_of(out)
    assert list(rows[0]) == ["name", "domain", "fade", "hazy_fade", "true_domain"]
    for r in rows:
        saved = out / "images" / r["name"]
        assert float(r["fade"]) == pytest.approx(pyfade.fade(str(saved)), rel=1e-6, abs=0)
        hazy = pyfade.fade(str(root / "test" / "hazy" / r["name"]))
        assert float(r["hazy_fade"]) == pytest.approx(hazy, rel=1e-6, abs=0)
        assert r["domain"] in ("indoor", "outdoor")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["better"] == {"fade": "lower"} == summary["better"]
    assert metrics["hazy_fade"] == pytest.approx(np.mean([float(r["hazy_fade"]) for r in rows]))
    assert sum(d["count"] for d in metrics["per_domain"].values()) == 3
    assert "psnr" not in metrics


def test_a_split_without_gt_refuses_reference_metrics_and_half_pairs_are_refused(trained, tmp_path):
    root = tmp_path / "real"
    names = hazy_photos(root / "test" / "hazy")
    ckpt = ["--ckpt", str(trained / "best.pth"), "--data-dir", str(root)]
    with pytest.raises(DataError, match=r"psnr need ground truth.*GT does not exist.*fade"):
        evaluate.main([*ckpt, "--out", str(tmp_path / "a"), "--metrics", "fade,psnr"])
    (root / "test" / "GT").mkdir()
    shutil.copy(root / "test" / "hazy" / names[0], root / "test" / "GT" / names[0])
    with pytest.raises(DataError, match=r"2 image\(s\) without a GT counterpart"):
        evaluate.main([*ckpt, "--out", str(tmp_path / "b"), "--metrics", "fade"])


def test_unknown_metric_names_the_known_ones(trained, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--ckpt", str(trained / "best.pth"), "--metrics", "fade,fid"])
    assert "unknown metric fid; known: psnr, ssim, lpips" in capsys.readouterr().err


def _random_alexnet(path: Path) -> Path:
    """torchvision's AlexNet with seeded random weights, saved as its weight file is."""
    import torchvision

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def test_lpips_and_ciede2000_equal_their_libraries_on_the_saved_images(
    trained, data_root, tmp_path, monkeypatch
):
    needs("lpips")
    needs("skimage")
    import lpips
    from skimage.color import deltaE_ciede2000, rgb2lab

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(_random_alexnet(tmp_path / "home" / "hub" / "checkpoints" / ALEXNET.name), weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # found through --metric-weights
    out = tmp_path / "result"
    cache = f"clip.cache_dir={tmp_path / 'cache'}"
    evaluate.main(
        [
            *("--ckpt", str(trained / "best.pth"), "--out", str(out), "--save-images", cache),
            *("--metrics", "psnr,lpips,ciede2000", "--metric-weights", str(weights)),
        ]
    )
    # lpips' own loading: torchvision reads the AlexNet file from $TORCH_HOME's hub cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    reference = lpips.LPIPS(net="alex", version="0.1", verbose=False)
    for r in rows_of(out):
        saved = out / "images" / Path(r["name"]).with_suffix(".png").name
        files = {"": saved, "hazy_": data_root / "test" / "hazy" / r["name"]}
        gt = data_root / "test" / "GT" / r["name"]
        for prefix, image in files.items():
            theirs = reference(lpips.im2tensor(lpips.load_image(str(image))),
                               lpips.im2tensor(lpips.load_image(str(gt)))).item()  # fmt: skip
            assert float(r[prefix + "lpips"]) == pytest.approx(theirs, rel=1e-6, abs=0)
            lab = [rgb2lab(read_rgb(p) / 255.0) for p in (image, gt)]
            delta = deltaE_ciede2000(*lab).mean()
            assert float(r[prefix + "ciede2000"]) == pytest.approx(delta, rel=1e-9)


@pytest.mark.parametrize("name", [m.name for m in METRICS.values() if m.files])
def test_a_missing_weight_file_is_one_line_naming_it_and_where_to_put_it(
    name, tmp_path, monkeypatch
):
    needs(METRICS[name].module)
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    weights = tmp_path / "weights"
    weights.mkdir()
    for file in METRICS[name].files:
        with pytest.raises(WeightsError) as e:
            load_metric(name, weights, torch.device("cpu"))
        message = str(e.value)
        assert "\n" not in message and file.name in message and file.url in message
        if hasattr(file, "cache"):
            assert f"--metric-weights {weights}" in message and str(file.cache()) in message
            assert str(tmp_path / "torch") in message
            (weights / file.name).write_bytes(b"")  # found now: the next file is asked for
        else:
            assert str(tmp_path / "hf") in message


def test_a_missing_library_is_one_line_saying_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyfade" else real(name, *a)
    )
    with pytest.raises(MissingPackageError, match=r"fade-python.*requirements-metrics\.txt"):
        load_metric("fade", None, torch.device("cpu"))


def test_a_missing_weight_file_stops_test_py_before_it_replaces_earlier_results(
    trained, tmp_path, monkeypatch
):
    needs("lpips")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "result"
    out.mkdir()
    (out / "per_image.csv").write_text("earlier results\n")
    args = ["--ckpt", str(trained / "best.pth"), "--out", str(out), "--overwrite"]
    with pytest.raises(WeightsError, match=ALEXNET.name):
        evaluate.main([*args, "--metrics", "psnr,lpips"])
    assert (out / "per_image.csv").read_text() == "earlier results\n"


def test_piqe_from_pyiqa_needs_no_file_stays_offline_and_scores_as_pyiqa_does(
    tmp_path, monkeypatch
):
    needs("pyiqa")
    import pyiqa
    from huggingface_hub import constants

    for switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as read at import, unset
    names = hazy_photos(tmp_path)
    mine = load_metric("piqe", None, torch.device("cpu"))
    assert constants.is_offline_mode() and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    theirs = pyiqa.create_metric("piqe", device="cpu")
    for name in names:
        image = torch.from_numpy(read_rgb(tmp_path / name)).permute(2, 0, 1)[None] / 255.0
        assert mine(image, None) == pytest.approx(theirs(str(tmp_path / name)).item(), rel=1e-6)


def test_the_metrics_bench_times_what_loads_and_says_why_the_rest_is_not_timed(
    tmp_path, monkeypatch
):
    bench = importlib.import_module("bench.bench_metrics")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = ["--metrics", "psnr,brisque", "--size", "32", "--repeats", "1"]
    payload = bench.main([*argv, "--json", str(tmp_path / "m.json")])
    psnr, brisque = payload["results"]
    assert psnr["metric"] == "psnr" and psnr["median_s"] > 0
    assert "brisque" in brisque["skipped"] and "median_s" not in brisque
    assert payload["network"]["median_s"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["results"] == payload["results"]
