"""Which networks exist, as plain data: one entry per backbone, and the names built from them.

The config checks `model.name` against this table and `models.build_model` builds from it, so it
imports nothing but the standard library: reading a config never imports torch. Adding a
backbone is one module in models/ (with a `build(size, **overrides)` function) and one entry in
BACKBONES (docs/EXTENDING.md); tests/test_backbones.py holds every entry to the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

# How the CLIP text feature enters the network: not at all, concatenated, or added.
FUSION_MODES = ("none", "concat", "add")
# The speed options of SpeedSettings.network_args() that a constructor may take.
SPEED_OPTIONS = ("channels_last", "strips", "fused_dwconv")


@dataclass(frozen=True)
class Backbone:
    """One dehazing network and its two model families.

    module: the models/ module whose `build(size, **overrides)` builds it.
    sizes: the size suffixes of its variants (`<family>-<size>`).
    plain: the family name without CLIP guidance (fusion 'none').
    guided: the family name with the CLIP text feature concatenated at the input.
    stages: how many numbers `model.depths` (blocks per stage) holds.
    published: the key of its published settings in utils/protocol.PUBLISHED (None: it has
        none, and a run's numbers compare with no paper's).
    input_weight: the input layer's weight, whose input channels a warm start from the plain
        network widens with zeros for the text fusion's extra channels (models.loading).
    speed_options: which SPEED_OPTIONS its constructor takes; build_network passes only those
        (they change speed, never the numbers beyond float tolerance).
    memory_scale: per size, the peak inference memory per pixel relative to MixDehazeNet's
        (CPU, fp32, bench/bench_inference.py; docs/PERFORMANCE.md), by which predict.py scales
        its per-pixel estimate before it starts an image.
    """

    module: str
    sizes: tuple[str, ...]
    plain: str
    guided: str
    stages: int
    published: str | None
    input_weight: str
    speed_options: tuple[str, ...]
    memory_scale: tuple[float, ...]


BACKBONES: tuple[Backbone, ...] = (
    Backbone(
        module="models.mixdehazenet",
        sizes=("t", "s", "b", "l"),
        plain="mixdehazenet",
        guided="mixcl",
        stages=5,
        published="mixcldehazenet",
        input_weight="patch_embed.proj.weight",
        speed_options=SPEED_OPTIONS,
        memory_scale=(1.0, 1.0, 1.0, 1.0),  # the peak does not grow with depth
    ),
    Backbone(
        module="models.dehazeformer",
        sizes=("t", "s", "b", "m", "l"),
        plain="dehazeformer",
        guided="clipdehazeformer",
        stages=5,
        published="dehazeformer",
        input_weight="patch_embed.proj.weight",
        speed_options=(),
        # 1024x1024: 1260, 2300, 2300, 2300 and 3528 B/px against mixcl-s's 816
        memory_scale=(1.55, 2.82, 2.82, 2.82, 4.33),
    ),
)
# Model-name prefix -> (its backbone, its default fusion).
FAMILIES: dict[str, tuple[Backbone, str]] = {
    name: (backbone, fusion)
    for backbone in BACKBONES
    for name, fusion in ((backbone.plain, "none"), (backbone.guided, "concat"))
}
MODEL_NAMES: tuple[str, ...] = tuple(
    f"{family}-{size}" for family, (backbone, _) in FAMILIES.items() for size in backbone.sizes
)


def split_name(name: str) -> tuple[Backbone, str, str]:
    """(backbone, size, default fusion) of the variant `name` (one of MODEL_NAMES)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    family, size = name.rsplit("-", 1)
    backbone, fusion = FAMILIES[family]
    return backbone, size, fusion


def default_fusion(name: str) -> str:
    """The fusion mode of the variant `name` (one of MODEL_NAMES)."""
    return split_name(name)[2]


def speed_options(name: str) -> tuple[str, ...]:
    """The speed options that the constructor of the variant `name` takes."""
    return split_name(name)[0].speed_options


def memory_scale(name: str) -> float:
    """The peak inference memory per pixel of the variant `name` relative to MixDehazeNet's."""
    backbone, size, _ = split_name(name)
    return backbone.memory_scale[backbone.sizes.index(size)]
