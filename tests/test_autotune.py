"""speed.*: auto: measured once per machine and workload, cached, never overriding a set value,
and choosing settings that compute the reference network (CPU, tiny networks, a fake clock
where the choice must be known)."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

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


class RecordedWorkload(FakeWorkload):
    """A FakeWorkload that also records which setting's step ran, in order."""

    def __init__(self, costs: dict[tuple, float]) -> None:
        super().__init__(costs)
        self.ran: list[tuple] = []

    def make_step(self, setting: dict):
        step = super().make_step(setting)

        def recorded() -> None:
            self.ran.append(tuple(setting.values()))
            step()

        return recorded


def test_each_setting_is_warmed_up_then_timed_round_robin(tmp_path):
    work = RecordedWorkload(costs((False, False)))
    tuning = tune("training", {}, TWO, work.make_step, CPU, tmp_path, work.clock)
    settings = [(True, True), (True, False), (False, True), (False, False)]
    assert work.ran == settings * 3  # one untimed round (WARMUP), two timed ones (REPEATS)
    assert [tuple(t["setting"].values()) for t in tuning.times] == settings
    assert [t["median_s"] for t in tuning.times] == [2.0, 2.0, 2.0, 1.0]


def test_the_measurement_is_printed_with_the_choice_marked_and_where_it_is_cached(tmp_path, capsys):
    work = FakeWorkload(costs((True, False)))

    def make_step(setting):
        if not setting["channels_last"] and setting["fused_dwconv"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried 9 GiB\nmore lines")
        return work.make_step(setting)

    tuning = tune("training x", {}, TWO, make_step, CPU, tmp_path, work.clock)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"speed: measured training x in \d+\.\d s, median step per setting:", lines[0]
    )
    assert lines[1:] == [
        "  channels_last=True fused_dwconv=True: 2.000 s",
        "  channels_last=True fused_dwconv=False: 1.000 s  <- chosen",
        "  channels_last=False fused_dwconv=True: out of memory: CUDA out of memory. Tried 9 GiB",
        "  channels_last=False fused_dwconv=False: 2.000 s",
        f"speed: choice cached in {tuning.path}",
    ]
    tune("training x", {}, TWO, make_step, CPU, tmp_path, work.clock)
    assert capsys.readouterr().out == (
        "speed: training x: channels_last=True fused_dwconv=False, as measured before "
        f"({tuning.path})\n"
    )


def test_a_run_folder_records_the_measurement(tmp_path):
    work = FakeWorkload(costs((True, True)))
    tuning = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path, work.clock)
    record = tuning.record()
    assert record == {
        "choice": {"channels_last": True, "fused_dwconv": True},
        "times": tuning.times,
        "measuring_s": tuning.seconds,
        "cached": False,
        "cache_file": str(tuning.path),
        "key": {"model": "x", "options": {k: list(v) for k, v in TWO.items()}},
    }
    assert json.loads(tuning.path.read_text()) == {
        "key": record["key"],
        "choice": record["choice"],
        "times": tuning.times,
    }


def test_when_no_setting_fits_in_memory_the_workload_is_named(tmp_path):
    def make_step(setting):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError, match=r"^training: no setting fits in memory"):
        tune("training", {}, TWO, make_step, CPU, tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_cache_folder_that_cannot_be_written_only_costs_measuring_again(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    work = FakeWorkload(costs((True, True)))
    tuning = tune("training", {}, TWO, work.make_step, CPU, blocked / "speed", work.clock)
    assert tuning.choice == {"channels_last": True, "fused_dwconv": True}
    out = capsys.readouterr().out
    assert f"speed: could not cache the measured choice in {tuning.path} (Not a directory)" in out


def test_a_cache_file_of_another_key_is_not_reused(tmp_path):
    work = FakeWorkload(costs((True, True)))
    tuning = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path, work.clock)
    stored = json.loads(tuning.path.read_text())
    for content in ({**stored, "key": {"model": "y"}}, [stored]):
        tuning.path.write_text(json.dumps(content))
        work.built.clear()
        assert not tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path).cached
        assert len(work.built) == 4


def test_measuring_draws_none_of_the_runs_random_numbers(tmp_path):
    def make_step(setting):
        torch.rand(1000)  # building a candidate network draws its weights
        return lambda: torch.rand(10)

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    tune("training", {}, TWO, make_step, CPU, tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_the_key_names_this_machine_torch_and_threads():
    key = utils.autotune.tuning_key(CPU, {"batch": 2})
    assert key == {
        "version": utils.autotune.CACHE_VERSION,
        "device": utils.autotune.device_name(CPU),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": 2,
    }
    assert utils.autotune.device_name(CPU).endswith(f" ({platform.machine()})")
    cpuinfo = Path("/proc/cpuinfo")
    models = [n for n in cpuinfo.read_text().splitlines() if n.startswith("model name")]
    if models:
        model = models[0].split(":", 1)[1].strip()
        assert utils.autotune.device_name(CPU) == f"{model} ({platform.machine()})"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (
            "processor\t: 0\nmodel name\t: Vendor CPU: 8 cores @ 3GHz\n",
            "Vendor CPU: 8 cores @ 3GHz",
        ),
        ("processor\t: 0\n", None),  # no model name: what the platform module says
        (None, None),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_the_cpu_is_named_by_its_model_name_else_by_the_platform(
    tmp_path, monkeypatch, cpuinfo, expected
):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(utils.autotune, "CPUINFO", path)
    name = expected or platform.processor() or "cpu"
    assert utils.autotune.device_name(CPU) == f"{name} ({platform.machine()})"


def test_a_cache_folder_that_does_not_exist_yet_is_made(tmp_path):
    folder = tmp_path / "new" / "speed"
    work = FakeWorkload(costs((False, True)))
    first = tune("training", {"model": "x"}, TWO, work.make_step, CPU, folder, work.clock)
    assert first.path.parent == folder and json.loads(first.path.read_text())
    assert [p.name for p in folder.iterdir()] == [first.path.name]  # no temporary file left
    again = FakeWorkload(costs((True, True)))
    second = tune("training", {"model": "x"}, TWO, again.make_step, CPU, folder, again.clock)
    assert second.cached and second.choice == first.choice


def test_a_cached_choice_is_recorded_as_it_was_measured(tmp_path):
    work = FakeWorkload(costs((False, True)))
    before = time.perf_counter()
    first = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path, work.clock)
    assert 0 <= first.seconds <= time.perf_counter() - before
    again = FakeWorkload(costs((True, True)))
    second = tune("training", {"model": "x"}, TWO, again.make_step, CPU, tmp_path, again.clock)
    assert second.record() == {
        **first.record(),
        "measuring_s": 0.0,
        "cached": True,
    }


def test_the_cache_file_is_renamed_in_from_its_own_folder(tmp_path, monkeypatch):
    """The temporary file lies beside the cache file, so the rename is atomic (one file system)."""
    renames = []
    replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: renames.append((src, dst)) or replace(src, dst)
    )
    work = FakeWorkload(costs((False, True)))
    tuning = tune("training", {"model": "x"}, TWO, work.make_step, CPU, tmp_path, work.clock)
    assert [(Path(src).parent, Path(dst)) for src, dst in renames] == [(tmp_path, tuning.path)]
