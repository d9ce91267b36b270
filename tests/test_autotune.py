"""speed.*: auto: measured once per machine and workload, cached, never overriding a set value,
and choosing settings that compute the reference network (CPU, tiny networks, a fake clock
where the choice must be known)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import networks
import utils.autotune
import utils.speed
from models.registry import speed_options
from utils.autotune import tune
from utils.config import load_config
from utils.image import write_rgb
from utils.speed import DEVICE_SPEED, Probe, precisions, speed_for

from .helpers import FP32_TOL, TINY, image, load_entry, reference_and, text, train_args

CPU = torch.device("cpu")
TWO = {"channels_last": (True, False), "fused_dwconv": (True, False)}


class FakeWorkload:
    """Steps that cost a known time on a fake clock, and a count of the steps built."""

    def __init__(self, costs: dict[tuple, float]) -> None:
        self.costs, self.now, self.built = costs, 0.0, []

    def clock(self) -> float:
        return self.now

    def make_step(self, setting: dict):
        self.built.append(setting)
        cost = self.costs[tuple(setting.values())]

        def step() -> None:
            self.now += cost

        return step


def costs(fastest: tuple) -> dict[tuple, float]:
    """Every setting of TWO costs 2 s, `fastest` 1 s."""
    return {(a, b): 1.0 if (a, b) == fastest else 2.0 for a in (True, False) for b in (True, False)}


def test_the_fastest_is_chosen_once_then_read_from_the_cache(tmp_path, capsys):
    work = FakeWorkload(costs((False, True)))
    first = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path, work.clock)
    assert first.choice == {"channels_last": False, "fused_dwconv": True} and not first.cached
    assert len(work.built) == 4
    assert sorted(t["median_s"] for t in first.times) == [1.0, 2.0, 2.0, 2.0]
    out = capsys.readouterr().out
    assert (
        "measured training in " in out and "channels_last=False fused_dwconv=True: 1.000 s" in out
    )
    again = FakeWorkload(costs((True, True)))  # what a second measurement would choose
    second = tune("training", {"model": "x"}, TWO, again.make_step, CPU, tmp_path, again.clock)
    assert again.built == [] and second.cached and second.choice == first.choice
    assert "as measured before" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["torch", "device", "workload"])
def test_a_changed_device_torch_or_workload_measures_again(tmp_path, monkeypatch, change):
    key = {"model": "x", "batch": 2}
    work = FakeWorkload(costs((True, False)))
    tune("training", utils.autotune.tuning_key(CPU, key), TWO, work.make_step, CPU, tmp_path)
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "device":
        monkeypatch.setattr(utils.autotune, "device_name", lambda device: "another CPU")
    else:
        key["batch"] = 4
    work.built.clear()
    tune("training", utils.autotune.tuning_key(CPU, key), TWO, work.make_step, CPU, tmp_path)
    assert len(work.built) == 4
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_an_unreadable_cache_file_is_measured_again(tmp_path):
    work = FakeWorkload(costs((True, True)))
    first = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path)
    first.path.write_text("{half a file")
    work.built.clear()
    again = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path)
    assert len(work.built) == 4 and not again.cached and json.loads(again.path.read_text())


def test_a_setting_out_of_memory_is_dropped(tmp_path):
    work = FakeWorkload(costs((True, True)))
    real = work.make_step

    def make_step(setting):
        if setting["channels_last"] and setting["fused_dwconv"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(setting)

    tuning = tune("training", {}, TWO, make_step, CPU, tmp_path, work.clock)
    assert tuning.choice != {"channels_last": True, "fused_dwconv": True}
    assert "out of memory" in tuning.times[0]["error"]


def tiny_config(tmp_path, *overrides: str):
    return load_config(
        None,
        [
            "model.name=mixcl-t",
            f"model.depths={list(TINY)}",
            f"speed.cache_dir={tmp_path}",
            *overrides,
        ],
    )


def test_a_set_value_is_never_measured_nor_overridden(tmp_path):
    work = FakeWorkload({(True,): 9.0, (False,): 1.0})
    cfg = tiny_config(tmp_path, "speed.channels_last=true")
    accepted = speed_options("mixcl-t")
    speed, tuning = speed_for(cfg, CPU, "train", Probe(accepted, {}, work.make_step))
    assert speed.channels_last is True and speed.fused_dwconv is False
    assert work.built == [{"fused_dwconv": True}, {"fused_dwconv": False}]
    assert tuning.choice == {"fused_dwconv": False}
    work.built.clear()
    both = tiny_config(tmp_path, "speed.channels_last=false", "speed.fused_dwconv=true")
    speed, tuning = speed_for(both, CPU, "train", Probe(accepted, {}, work.make_step))
    assert (speed.channels_last, speed.fused_dwconv, tuning, work.built) == (False, True, None, [])


def test_autotune_false_takes_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(utils.speed, "cpu_has_native_bf16", lambda: False)
    work = FakeWorkload({})
    cfg = tiny_config(tmp_path, "speed.autotune=false")
    speed, tuning = speed_for(cfg, CPU, "predict", Probe(("strips",), {}, work.make_step))
    assert (speed, tuning, work.built) == (DEVICE_SPEED["cpu"], None, [])


def test_bf16_is_measured_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(utils.speed, "cpu_has_native_bf16", lambda: False)
    assert precisions(CPU) == ("none",)
    monkeypatch.setattr(utils.speed, "cpu_has_native_bf16", lambda: True)
    assert precisions(CPU) == ("none", "bf16")


@pytest.mark.parametrize("phase", ["train", "test"])
def test_the_chosen_settings_compute_the_reference_network(tmp_path, phase):
    cfg = tiny_config(tmp_path)
    speed, tuning = networks.tune_speed(cfg, 512, CPU, phase, 2, 32)
    assert (
        set(tuning.choice)
        == set(speed_options("mixcl-t"))
        - {
            "train": {"strips"},
            "test": {"fused_dwconv"},
        }[phase]
    )
    ref, model = reference_and(speed.network_args())
    ref.train(phase == "train"), model.train(phase == "train")
    x, t = image(40, 44, batch=2), text(batch=2)
    with torch.set_grad_enabled(phase == "train"):
        assert (model(x, t) - ref(x, t)).abs().max() <= FP32_TOL


def test_a_training_run_records_its_resolved_speed_and_measures_once(data_root, tmp_path):
    """config.yaml holds the values the run trained with and speed.json their times; the
    checkpoint keeps `auto`, for test.py to measure inference on its own machine. Measuring
    draws no random number of the run: a run reading the cache trains the same weights."""
    train = load_entry("train")
    fresh = f"speed.cache_dir={tmp_path / 'speed'}"
    train.main([*train_args(data_root, tmp_path, exp="a"), fresh])
    train.main([*train_args(data_root, tmp_path, exp="b"), fresh])
    a, b = tmp_path / "a", tmp_path / "b"
    speed = yaml.safe_load((a / "config.yaml").read_text())["speed"]
    assert {type(speed[k]) for k in ("channels_last", "strips", "fused_dwconv", "compile")} == {
        bool
    }
    measured, cached = (json.loads((r / "speed.json").read_text()) for r in (a, b))
    assert not measured["cached"] and cached["cached"] and measured["measuring_s"] > 0
    assert measured["choice"] == cached["choice"]
    for k, v in measured["choice"].items():
        assert speed[k] == v
    ckpt_a, ckpt_b = (torch.load(r / "last.pth", weights_only=False) for r in (a, b))
    assert ckpt_a["config"]["speed"]["channels_last"] == "auto"
    for key, value in ckpt_a["model"].items():
        assert torch.equal(value, ckpt_b["model"][key]), key


def test_predict_measures_once_and_never_a_set_key(trained, tmp_path, monkeypatch):
    """predict.py measures its own settings (a checkpoint keeps `auto`), reuses them, and
    leaves a key set on its command line alone."""
    measured = []
    real = utils.autotune.measure

    def spy(settings, *args, **kwargs):
        measured.append(list(settings))
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(utils.autotune, "measure", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(utils.speed, "cpu_has_native_bf16", lambda: False)
    photo = tmp_path / "in.png"
    write_rgb(photo, torch.rand(3, 40, 44))
    predict = load_entry("predict")
    ckpt, cache = str(trained / "last.pth"), f"speed.cache_dir={tmp_path / 'speed'}"
    for out, extra in (("a", []), ("b", []), ("c", ["speed.strips=false"])):
        predict.main(["--ckpt", ckpt, str(photo), "--out", str(tmp_path / out), cache, *extra])
    assert [len(m) for m in measured] == [4, 2]
    assert {s["strips"] for s in measured[0]} == {True, False}
    assert all("strips" not in s for s in measured[1])
