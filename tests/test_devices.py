"""The speed decision (utils/speed.py): the table's defaults per device, native-bf16 CPUs, the
former name of speed.predict_precision; and memory estimates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import networks
import utils.speed
from utils.config import Config, load_config
from utils.image import read_rgb, write_rgb
from utils.memory import available_memory
from utils.speed import DEVICE_SPEED, SpeedSettings, device_kind, speed_for, table_speed

from .helpers import load_entry

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU computes bf16 natively (AMX)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)


@pytest.fixture
def no_native_bf16(monkeypatch):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)


def test_auto_keys_take_the_device_defaults_of_the_table_and_set_keys_win():
    default = load_config(None)
    assert default.speed.channels_last == "auto" and default.speed.predict_precision == "auto"
    old = load_config(None, ["speed.channels_last=null", "speed.predict_precision=null"])
    assert old == default  # null, before auto existed, meant the device's default
    for kind, row in DEVICE_SPEED.items():
        assert table_speed(default, kind) == row
    cfg = load_config(None, ["speed.fused_dwconv=true", "speed.predict_precision=none"])
    mine = table_speed(cfg, "cpu-bf16")
    assert mine.fused_dwconv and mine.predict_precision == "none"
    assert mine.channels_last == DEVICE_SPEED["cpu-bf16"].channels_last


def test_speed_settings_fill_only_the_null_keys_from_the_device():
    cfg = load_config(None, ["speed.strips=false", "speed.predict_precision=fp16"])
    chosen = table_speed(cfg, "cpu")
    assert chosen == replace(DEVICE_SPEED["cpu"], strips=False, predict_precision="fp16")
    assert table_speed(Config(), "cuda") == DEVICE_SPEED["cuda"]
    assert chosen.network_args() == {
        "channels_last": DEVICE_SPEED["cpu"].channels_last,
        "strips": False,
        "fused_dwconv": DEVICE_SPEED["cpu"].fused_dwconv,
    }


def test_the_network_gets_the_resolved_options():
    settings = SpeedSettings(False, False, True, False, "none")
    assert settings.network_args() == {
        "channels_last": False,
        "strips": False,
        "fused_dwconv": True,
    }
    net = networks.build_network(load_config(None, ["model.name=mixcl-t"]), 512, settings)
    assert not net.channels_last and net.layer1.blocks[0].fused_dwconv


def test_device_kind(native_bf16):
    assert device_kind(CPU) == "cpu-bf16"
    assert device_kind(CUDA) == "cuda"


def test_predict_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, no_native_bf16):
    cfg = load_config(None)
    assert device_kind(CPU) == "cpu"
    assert speed_for(cfg, CPU, "predict")[0].predict_precision == "none"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert speed_for(cfg, CPU, "predict")[0].predict_precision == "bf16"
    pinned = load_config(None, ["speed.predict_precision=none"])
    assert speed_for(pinned, CPU, "predict")[0].predict_precision == "none"


def test_cuda_memory_counts_the_allocators_cached_blocks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * 2**30)
    assert available_memory("cuda") == 7 * 2**30


def test_memory_estimate_uses_the_devices_own_bytes_per_pixel(monkeypatch):
    predict = load_entry("predict")
    monkeypatch.setattr(predict, "available_memory", lambda device: 10**9)
    monkeypatch.setitem(predict.BYTES_PER_PIXEL, ("cuda", "fp16"), 100)
    monkeypatch.setitem(predict.BYTES_PER_PIXEL, ("cuda", "none"), 1000)
    predict.check_memory(3000, 3000, "mixcl-s", CUDA, "fp16")  # 0.9 GB
    with pytest.raises(MemoryError, match=r"--max-side 1000"):
        predict.check_memory(3000, 3000, "mixcl-s", CUDA, "none")  # 9 GB


def test_memory_estimate_scales_with_the_backbones_measured_memory(monkeypatch):
    """DehazeFormer needs more memory per pixel than MixDehazeNet: its estimate says so."""
    predict = load_entry("predict")
    monkeypatch.setattr(predict, "available_memory", lambda device: 10**9)
    monkeypatch.setitem(predict.BYTES_PER_PIXEL, ("cpu", "none"), 100)
    predict.check_memory(3000, 3000, "mixcl-s", torch.device("cpu"), "none")  # 0.9 GB
    with pytest.raises(MemoryError, match=r"--max-side"):
        predict.check_memory(3000, 3000, "dehazeformer-b", torch.device("cpu"), "none")


@pytest.fixture
def autocast_calls(monkeypatch) -> list[str]:
    """The precisions the entry points' networks run under, in order."""
    calls = []
    real_autocast = networks.autocast

    def recording_autocast(device, amp):
        calls.append(amp)
        return real_autocast(device, amp)

    monkeypatch.setattr(networks, "autocast", recording_autocast)
    return calls


def test_predict_runs_bf16_on_native_bf16_cpus(trained, tmp_path, monkeypatch, autocast_calls):
    """bf16 emulated or native computes the same: within a few grey levels of fp32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # predict on the CPU
    photo = tmp_path / "in.png"
    write_rgb(photo, np.random.default_rng(0).integers(0, 256, (45, 52, 3), np.uint8))
    predict = load_entry("predict")
    for native, out in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(utils.speed, "cpu_has_native_bf16", lambda n=native: n)
        args = ["--ckpt", str(trained / "last.pth"), str(photo), "--out", str(tmp_path / out)]
        predict.main([*args, "speed.autotune=false"])  # the table (DEVICE_SPEED)
    assert autocast_calls == ["bf16", "none"]
    low = read_rgb(tmp_path / "bf16" / "in.png").astype(float)
    full = read_rgb(tmp_path / "fp32" / "in.png").astype(float)
    assert np.abs(low - full).mean() <= 2 and np.abs(low - full).max() <= 16


def test_a_checkpoint_with_precision_predict_still_predicts_in_it(
    trained, tmp_path, monkeypatch, autocast_calls
):
    """A checkpoint written when speed.predict_precision was precision.predict loads, and
    predict.py runs in the precision it names."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt = torch.load(trained / "last.pth", weights_only=False)
    del ckpt["config"]["speed"]["predict_precision"]
    ckpt["config"]["precision"]["predict"] = "bf16"
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    photo = tmp_path / "in.png"
    write_rgb(photo, np.random.default_rng(0).integers(0, 256, (40, 44, 3), np.uint8))
    args = ["--ckpt", str(old), str(photo), "--out", str(tmp_path / "out"), "speed.autotune=false"]
    assert len(load_entry("predict").main(args)) == 1
    assert autocast_calls == ["bf16"]


def test_test_py_keeps_fp32_on_native_bf16_cpus(native_bf16, autocast_calls):
    """The protocol evaluates in fp32: test.py's network runs under precision.eval."""
    cfg = load_config(None, ["model.name=mixcl-t", "model.depths=[1,1,1,1,1]"])
    net = networks.build_network(cfg, 512, speed_for(cfg, CPU, "test")[0])
    run = networks.inference_network(net, cfg, CPU)
    run(torch.zeros(1, 3, 40, 40), torch.zeros(1, 1, 512))
    assert autocast_calls == ["none"]
