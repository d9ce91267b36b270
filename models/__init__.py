"""Networks: MixDehazeNet and its CLIP-guided variant MixCLDehazeNet."""

from models.factory import build_model
from models.loading import load_pretrained
from models.mixdehazenet import MixDehazeNet
from models.text_fusion import TextImageFusion
from utils.variants import MODEL_NAMES

__all__ = ["MODEL_NAMES", "MixDehazeNet", "TextImageFusion", "build_model", "load_pretrained"]
