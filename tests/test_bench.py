"""Bench: parameters, FLOPs, file size and speed of a checkpoint or an architecture."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from carcli import measure as measure_module
from carcli.bench import bench
from carcli.cli import app
from carcli.measure import count_flops, count_parameters, physical_cores
from carcli.models.registry import count_parameters as registry_parameters

runner = CliRunner()


def test_flops_of_a_known_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.Flatten())
    assert count_flops(model, 32) == 2 * 8 * 3 * 3 * 3 * 32 * 32  # one multiply-add = 2 FLOPs


def test_nonzero_parameters_are_counted():
    layer = torch.nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight[:5] = 0
    assert count_parameters(layer) == (110, 60)


def test_bench_of_an_arch(tmp_path):
    result = bench(arch="ghostnet", img_size=64, device="cpu")
    assert result.parameters == registry_parameters("ghostnet", {"model": 196})
    assert result.file_bytes is None and result.img_size == 64
    assert 1e7 < result.flops < 1e8  # ghostnet: ~150 M multiply-adds at 224 px, (64/224)^2 of that here, x2
    assert result.latency_ms > 0 and result.throughput > 0
    assert result.device.startswith("cpu")


def test_bench_of_a_checkpoint_on_the_command_line(untrained_members):
    result = runner.invoke(app, ["bench", str(untrained_members[2]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    size = untrained_members[2].stat().st_size / 2**20
    assert f"{size:.2f} MiB" in result.output and "3 x 48 x 48" in result.output
    for words in ("FLOPs per image", "latency, batch 1", "throughput, batch 32"):
        assert words in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [([], "either a CHECKPOINT or --arch"), (["x.st", "--arch", "ghostnet"], "either a CHECKPOINT or --arch")],
)
def test_checkpoint_or_arch(args, words):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and words in result.output


def test_threads_default_to_one_for_latency_and_the_cores_for_throughput():
    result = bench(arch="ghostnet", img_size=32, device="cpu")
    assert (result.latency_threads, result.throughput_threads) == (1, physical_cores())
    assert "latency, batch 1 (cpu, 1 thread)" in dict(result.rows())
    pinned = bench(arch="ghostnet", img_size=32, device="cpu", threads=2)
    assert (pinned.latency_threads, pinned.throughput_threads) == (2, 2)
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_a_wide_spread_of_timings_is_a_warning(monkeypatch):
    monkeypatch.setattr(measure_module, "time_forward", lambda model, images, threads, budget: (0.01, 0.4))
    result = bench(arch="ghostnet", img_size=32, device="cpu")
    assert len(result.warnings) == 2 and "spread by 40%" in result.warnings[0]
    monkeypatch.setattr(measure_module, "time_forward", lambda model, images, threads, budget: (0.01, 0.05))
    assert bench(arch="ghostnet", img_size=32, device="cpu").warnings == []
