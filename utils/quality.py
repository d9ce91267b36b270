"""Image-quality metrics by name: which way is better, whether they need ground truth, the
library that computes each, its weight files and how it is loaded (docs/EVALUATION.md).

Every metric scores one image at a time: (1, 3, H, W) float tensors in [0, 1], the reference
None for the no-reference metrics. The libraries are imported only when a metric is loaded; a
missing library or weight file is a one-line error saying what to install or where to put the
file, checked before the library is called, so nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils.errors import MissingPackageError, WeightsError

if TYPE_CHECKING:  # torch is imported when a metric is built: the registry is read without it
    import torch

Scorer = Callable[["torch.Tensor", "torch.Tensor | None"], float]
REQUIREMENTS = "requirements-metrics.txt"
PYIQA_WEIGHTS = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"


def _torch_hub(sub: str) -> Callable[[], Path]:
    """A folder of torch's hub cache ($TORCH_HOME/hub, read when asked, as the libraries do)."""

    def folder() -> Path:
        import torch

        return Path(torch.hub.get_dir()) / sub

    return folder


@dataclass(frozen=True)
class WeightFile:
    """A file a metric loads: looked for in --metric-weights, then in its library's cache."""

    name: str
    url: str
    cache: Callable[[], Path]
    cache_owner: str  # whose cache folder that is, for the message

    def find(self, weights_dir: Path | None) -> Path | None:
        folders = [weights_dir] if weights_dir else []
        for folder in [*folders, self.cache()]:
            if (folder / self.name).is_file():
                return folder / self.name
        return None

    def missing(self, metric: str, weights_dir: Path | None) -> str:
        where = f"--metric-weights {weights_dir} or " if weights_dir else "--metric-weights DIR or "
        return (
            f"{metric} needs the weight file {self.name}, not found: download it from {self.url} "
            f"and put it in {where}{self.cache_owner}'s cache folder {self.cache()}"
        )


@dataclass(frozen=True)
class HubWeights:
    """A timm backbone that only its library loads, from the Hugging Face cache."""

    name: str  # the Hugging Face repository
    url: str

    def find(self, weights_dir: Path | None) -> Path | None:
        from huggingface_hub import constants, try_to_load_from_cache

        found = try_to_load_from_cache(self.name, "model.safetensors", constants.HF_HUB_CACHE)
        return Path(found) if isinstance(found, str) else None

    def missing(self, metric: str, weights_dir: Path | None) -> str:
        from huggingface_hub import constants

        return (
            f"{metric} needs the backbone {self.name} (model.safetensors) in the Hugging Face "
            f"cache {constants.HF_HUB_CACHE}, not found: on a machine with internet run "
            f"`hf download {self.name}` ({self.url}) and copy its folder "
            f"models--{self.name.replace('/', '--')} there"
        )


@dataclass(frozen=True)
class Metric:
    """One metric: `build(paths of its files, device)` returns its scorer."""

    name: str
    title: str
    lower_better: bool
    needs_gt: bool
    package: str | None  # the pip package; None: this project's own code
    module: str | None  # what it is imported as
    build: Callable[[list[Path], torch.device], Scorer]
    digits: int  # decimals a report shows
    meaning: str
    files: tuple[WeightFile | HubWeights, ...] = ()
    eight_bit: bool = True  # computed on the 8-bit image as saved (False: the float output)
    numpy: bool = False  # computed in NumPy on the CPU whatever the device (test.py's workers)

    @property
    def better(self) -> str:
        return "lower" if self.lower_better else "higher"


def _hwc(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) float64."""
    return image[0].detach().double().permute(1, 2, 0).cpu().numpy()


def _uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded as the saved PNG is, laid out as a
    decoded file is (C order, whatever the strides of the network's output)."""
    return np.ascontiguousarray(np.round(np.clip(_hwc(image), 0, 1) * 255).astype(np.uint8))


def _own(name: str) -> Callable[[list[Path], torch.device], Scorer]:
    """This project's metric `name` of utils/metrics.py (the published protocol's)."""

    def build(paths: list[Path], device: torch.device) -> Scorer:
        from utils import metrics

        fn = getattr(metrics, name)
        return lambda image, ref: fn(image, ref).item()

    return build


def _fade(paths: list[Path], device: torch.device) -> Scorer:
    import pyfade

    return lambda image, ref: float(pyfade.fade(_uint8(image)))


def _ciede2000(paths: list[Path], device: torch.device) -> Scorer:
    from skimage.color import deltaE_ciede2000, rgb2lab

    def score(image: torch.Tensor, ref: torch.Tensor | None) -> float:
        lab = [rgb2lab(_uint8(x) / 255.0) for x in (image, ref)]  # exact 8-bit values
        return float(deltaE_ciede2000(*lab).mean())

    return score


def _lpips(paths: list[Path], device: torch.device) -> Scorer:
    """lpips' AlexNet v0.1: its linear layers ship in the package; the AlexNet features are
    torchvision's ImageNet weights, read from the file found here instead of downloaded."""
    import lpips
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained` deprecation
        net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    state = torch.load(paths[0], map_location="cpu", weights_only=True)
    try:
        for stage in net.net.children():
            for index, layer in stage.named_children():
                layer.load_state_dict(
                    {k: state[f"features.{index}.{k}"] for k in layer.state_dict()}
                )
    except (KeyError, RuntimeError) as e:
        raise WeightsError(f"{paths[0]} is not torchvision's AlexNet weights ({e})") from None
    net = net.eval().to(device)

    def score(image: torch.Tensor, ref: torch.Tensor | None) -> float:
        # lpips' own conversion of the 8-bit values to [-1, 1] (its layout too: the float32
        # sums of a channels-last input differ in the last bits)
        return net(*(lpips.im2tensor(_uint8(x)).to(device) for x in (image, ref))).item()

    return score


def _stay_offline() -> None:
    """The Hugging Face libraries under pyiqa look nothing up online, unless the user set their
    switches otherwise; huggingface_hub reads its switch at import (open_clip may have imported
    it already), so it is set there too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = os.environ["HF_HUB_OFFLINE"].upper() in ("1", "ON", "YES", "TRUE")


def _pyiqa(name: str, path_arg: str | None = None) -> Callable[[list[Path], torch.device], Scorer]:
    """A pyiqa metric, its first weight file passed by path (pyiqa then downloads nothing)."""

    def build(paths: list[Path], device: torch.device) -> Scorer:
        _stay_offline()
        import pyiqa

        kwargs = {path_arg: str(paths[0])} if path_arg else {}
        metric = pyiqa.create_metric(name, device=device, **kwargs)
        return lambda image, ref: metric(image.to(device)).item()

    return build


def _pyiqa_file(name: str) -> WeightFile:
    return WeightFile(name, PYIQA_WEIGHTS + name, _torch_hub("pyiqa"), "pyiqa")


ALEXNET = WeightFile(
    "alexnet-owt-7be5be79.pth",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    _torch_hub("checkpoints"),
    "torchvision",
)
CLIP_RN50 = WeightFile(
    "RN50.pt",
    "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3"
    "e3b6c78a7b63bc04b6762/RN50.pt",
    _torch_hub("clip"),
    "pyiqa",
)
INCEPTION_RESNET_V2 = HubWeights(
    "timm/inception_resnet_v2.tf_in1k",
    "https://huggingface.co/timm/inception_resnet_v2.tf_in1k",
)

_PROJECT = {"package": None, "module": None}
_PYIQA = {"package": "pyiqa", "module": "pyiqa"}
_PATH = "pretrained_model_path"

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("psnr", "PSNR", False, True, **_PROJECT, build=_own("psnr"), digits=2,
               meaning="fidelity to the ground truth, dB", eight_bit=False),
        Metric("ssim", "SSIM", False, True, **_PROJECT, build=_own("ssim"), digits=4,
               meaning="structural similarity to the ground truth", eight_bit=False),
        Metric("lpips", "LPIPS", True, True, "lpips", "lpips", _lpips, digits=4,
               meaning="perceptual distance to the ground truth (AlexNet, v0.1)",
               files=(ALEXNET,)),
        Metric("ciede2000", "CIEDE2000", True, True, "scikit-image", "skimage", _ciede2000,
               digits=3, meaning="mean colour difference to the ground truth (CIE Lab)",
               numpy=True),
        Metric("fade", "FADE", True, False, "fade-python", "pyfade", _fade, digits=4,
               meaning="perceptual fog density", numpy=True),
        Metric("brisque", "BRISQUE", True, False, **_PYIQA, build=_pyiqa("brisque", _PATH),
               digits=2, meaning="distortion seen in natural-scene statistics",
               files=(_pyiqa_file("brisque_svm_weights.pth"),)),
        Metric("niqe", "NIQE", True, False, **_PYIQA, build=_pyiqa("niqe", _PATH), digits=3,
               meaning="distance from natural-image statistics",
               files=(_pyiqa_file("niqe_modelparameters.mat"),)),
        Metric("piqe", "PIQE", True, False, **_PYIQA, build=_pyiqa("piqe"), digits=2,
               meaning="block-wise distortion"),
        Metric("nima", "NIMA", False, False, **_PYIQA, build=_pyiqa("nima", _PATH), digits=3,
               meaning="predicted aesthetic rating, 1-10 (AVA)",
               files=(_pyiqa_file("NIMA_InceptionV2_ava-b0c77c00.pth"), INCEPTION_RESNET_V2)),
        Metric("musiq", "MUSIQ", False, False, **_PYIQA, build=_pyiqa("musiq", _PATH),
               digits=2, meaning="predicted quality, 0-100 (KonIQ-10k)",
               files=(_pyiqa_file("musiq_koniq_ckpt-e95806b9.pth"),)),
        Metric("clipiqa", "CLIP-IQA", False, False, **_PYIQA, build=_pyiqa("clipiqa", "backbone"),
               digits=4, meaning="CLIP's good-vs-bad photo score, 0-1 (RN50)",
               files=(CLIP_RN50,)),
    )
}  # fmt: skip


def parse_metric_names(text: str) -> list[str]:
    """`--metrics psnr,fade` -> ["psnr", "fade"]; an unknown name lists the known ones."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"unknown metric {', '.join(unknown) or repr(text)}; known: {', '.join(METRICS)}"
        )
    return list(dict.fromkeys(names))


def default_metrics(has_gt: bool) -> list[str]:
    """PSNR and SSIM where there is ground truth, FADE where there is none."""
    return ["psnr", "ssim"] if has_gt else ["fade"]


def load_metric(name: str, weights_dir: Path | None, device: torch.device) -> Scorer:
    """The scorer of metric `name`; a missing library or weight file is a one-line error."""
    return METRICS[name].build(metric_files(name, weights_dir), device)


def metric_files(name: str, weights_dir: Path | None) -> list[Path]:
    """The weight files of metric `name`, after checking that its library is installed: a
    missing library or file is a one-line error (the library is not imported here)."""
    metric = METRICS[name]
    if metric.module and importlib.util.find_spec(metric.module) is None:
        raise MissingPackageError(
            f"metric {name} needs the package {metric.package}: pip install -r {REQUIREMENTS} "
            f"(or pip install {metric.package})"
        )
    paths = []
    for file in metric.files:
        found = file.find(weights_dir)
        if found is None:
            raise WeightsError(file.missing(name, weights_dir))
        paths.append(found)
    return paths


def load_metrics(
    names: Sequence[str], weights_dir: Path | None, device: torch.device
) -> dict[str, Scorer]:
    """Every scorer, all checked before the first image is scored."""
    return {n: load_metric(n, weights_dir, device) for n in names}
