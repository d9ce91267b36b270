"""Networks: MixDehazeNet and its CLIP-guided variant MixCLDehazeNet."""

from models.factory import DEPTHS, MODEL_NAMES, build_model
from models.loading import load_pretrained
from models.mixdehazenet import MixDehazeNet
from models.text_fusion import TextImageFusion

__all__ = [
    "DEPTHS",
    "MODEL_NAMES",
    "MixDehazeNet",
    "TextImageFusion",
    "build_model",
    "load_pretrained",
]
