"""The backbone contract: every entry of models/registry.BACKBONES builds, runs, round-trips
its weights and warm-starts alike (docs/EXTENDING.md: adding a backbone)."""

from __future__ import annotations

import io
import logging
from dataclasses import replace

import pytest
import torch

from models.registry import BACKBONES, SPEED_OPTIONS, Backbone
from networks import build_network, load_weights
from utils.config import ConfigError, load_config
from utils.protocol import PUBLISHED, protocol_report
from utils.speed import DEVICE_SPEED

from .helpers import FP32_TOL, TEXT_DIM, image, randomize, text

CONTRACT = pytest.mark.parametrize("backbone", BACKBONES, ids=[b.plain for b in BACKBONES])
CPU = DEVICE_SPEED["cpu"]


def network(backbone: Backbone, guided: bool, speed=CPU, depths=None) -> torch.nn.Module:
    """The backbone's smallest variant with one block per stage, built as the entry points
    build it (networks.build_network)."""
    family = backbone.guided if guided else backbone.plain
    depths = depths or [1] * backbone.stages
    cfg = load_config(None, [f"model.name={family}-{backbone.sizes[0]}", f"model.depths={depths}"])
    return build_network(cfg, TEXT_DIM if guided else None, speed)


@CONTRACT
def test_the_entry_is_complete(backbone):
    assert len(backbone.memory_scale) == len(backbone.sizes)
    assert set(backbone.speed_options) <= set(SPEED_OPTIONS)
    assert backbone.published is None or backbone.published in PUBLISHED
    assert backbone.input_weight in network(backbone, guided=True).state_dict()


@CONTRACT
def test_depths_take_one_number_per_stage_of_the_entry(backbone):
    with pytest.raises(ConfigError, match=f"one number of blocks per stage, {backbone.stages} in"):
        network(backbone, guided=False, depths=[1] * (backbone.stages + 1))


@CONTRACT
@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
def test_forward_at_odd_sizes_keeps_the_shape(backbone, guided):
    net = randomize(network(backbone, guided))
    t = text() if guided else None
    with torch.no_grad():
        for hw in [(1, 1), (5, 9), (37, 61)]:
            out = net(image(*hw), t)
            assert out.shape == (1, 3, *hw) and torch.isfinite(out).all(), hw


@CONTRACT
def test_weights_round_trip_through_a_file_and_every_speed_option(backbone):
    """Speed options never change the state-dict keys: weights saved with one setting load
    into a network built with the other and compute the same."""
    net = randomize(network(backbone, guided=True))
    flipped = replace(CPU, **{k: not getattr(CPU, k) for k in SPEED_OPTIONS})
    other = network(backbone, guided=True, speed=flipped).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    name = f"{backbone.guided}-{backbone.sizes[0]}"
    load_weights(other, torch.load(buffer, weights_only=True), "saved.pth", name)
    x, t = image(41, 45), text()
    with torch.no_grad():
        assert (other(x, t) - net(x, t)).abs().max() <= FP32_TOL


@CONTRACT
def test_the_plain_networks_weights_warm_start_the_guided_one(backbone, caplog):
    plain = randomize(network(backbone, guided=False))
    guided = network(backbone, guided=True).eval()
    name = f"{backbone.guided}-{backbone.sizes[0]}"
    with caplog.at_level(logging.INFO, logger="models.loading"):
        load_weights(guided, {"state_dict": plain.state_dict()}, "plain.pth", name)
    assert "warm start" in caplog.text and "text_emb.q1.weight" in caplog.text
    widened = guided.state_dict()[backbone.input_weight]
    assert torch.equal(widened[:, :3], plain.state_dict()[backbone.input_weight])
    assert not widened[:, 3:].any()
    x = image(41, 45)
    with torch.no_grad():
        assert (guided(x, text()) - plain(x)).abs().max() <= 1e-6


@CONTRACT
def test_text_guides_the_guided_variant_only(backbone):
    plain, guided = (randomize(network(backbone, g)) for g in (False, True))
    assert not any(k.startswith("text_emb.") for k in plain.state_dict())
    x = image(41, 45)
    with torch.no_grad():
        assert torch.equal(plain(x, text(seed=3)), plain(x))
        assert not torch.equal(guided(x, text(seed=3)), guided(x, text(seed=4)))
    with pytest.raises(ValueError, match="text"):
        guided(x)


@CONTRACT
def test_a_run_compares_with_the_entrys_published_setting_or_none(backbone):
    cfg = load_config(None, [f"model.name={backbone.guided}-{backbone.sizes[0]}"])
    report = protocol_report(cfg)
    if backbone.published is None:
        assert report.startswith("protocol: no published setting")
    else:
        assert f"model.name={backbone.guided}-{backbone.sizes[0]} (paper: " in report
