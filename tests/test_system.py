"""The system line: samples, their formatting, the GPU warnings, and NVML absent or present.

NVML "present" here is a stubbed module: a unit test of how GPU figures are chosen and formatted
only (this machine has no GPU). The real psutil figures of a real training process are checked
against /proc in test_trackers.py.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from prefwatch.analysis.analyse import analyse
from prefwatch.files import system
from prefwatch.files.system import GpuSample, SystemLog, SystemSample, gpu_warnings, system_line
from prefwatch.ingest.discover import open_path


def fake_nvml(util: list[float], used: list[int], total: int = 80 << 30, pids: list[list[int]] | None = None):
    """A stand-in for pynvml with ``len(util)`` devices (unit tests of the formatting only)."""
    nvml = types.SimpleNamespace()
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(util)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUUID = lambda i: f"GPU-{i:04d}-aaaa"
    nvml.nvmlDeviceGetUtilizationRates = lambda i: types.SimpleNamespace(gpu=util[i])
    nvml.nvmlDeviceGetMemoryInfo = lambda i: types.SimpleNamespace(used=used[i], total=total)
    owners = pids or [[] for _ in util]
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda i: [types.SimpleNamespace(pid=p) for p in owners[i]]
    return nvml


def test_cell_gpus_from_cuda_visible_devices_or_the_process():
    nvml = fake_nvml([0, 0, 0], [0, 0, 0], pids=[[], [42], []])
    assert system.cell_gpus(nvml, 42, "2") == [2]
    assert system.cell_gpus(nvml, 42, "GPU-0000,GPU-0002-aaaa") == [0, 2]
    assert system.cell_gpus(nvml, 42, "") == []  # no GPU given to the cell
    assert system.cell_gpus(nvml, 42, None) == [1]  # where NVML finds the process


def test_gpu_figures_formatted_from_a_stubbed_nvml():
    nvml = fake_nvml([87.0, 3.0], [30 << 30, 1 << 30])
    gpus = system.gpu_samples(nvml, [0, 1])
    sample = SystemSample(1.0, 7, 98.4, 412 << 20, gpus)
    assert system_line(sample) == "cpu 98% 412M  gpu0 87% 30.0/80.0G  gpu1 3% 1.0/80.0G"


def test_without_nvml_no_gpu_and_no_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the package absent
    assert system.load_nvml() is None
    assert system.gpu_samples(None, [0]) == ()
    recorder = system.Recorder(tmp_path / "system.jsonl")
    sample = recorder.sample()
    assert sample.gpus == () and sample.rss > 0
    assert "gpu" not in (system_line(sample) or "")


def test_nvml_without_a_driver_is_no_gpu(monkeypatch):
    broken = types.ModuleType("pynvml")

    def init():
        raise RuntimeError("NVML Shared Library Not Found")

    broken.nvmlInit = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert system.load_nvml() is None


def samples(util: float, mem: float, seconds: int, every: int = 10) -> SystemLog:
    total = 80 << 30
    return SystemLog(
        [
            SystemSample(float(t), 1, 100.0, 1 << 30, (GpuSample(0, util, int(total * mem / 100), total),))
            for t in range(0, seconds + 1, every)
        ]
    )


def test_gpu_warnings_need_minutes_of_samples_while_running():
    assert [w.kind for w in gpu_warnings(samples(5.0, 97.0, 240), running=True)] == ["gpu_memory", "gpu_idle"]
    assert gpu_warnings(samples(5.0, 97.0, 60), running=True) == []  # a minute is not minutes
    assert gpu_warnings(samples(5.0, 97.0, 240), running=False) == []
    assert gpu_warnings(samples(50.0, 60.0, 240), running=True) == []
    busy_then_idle = samples(90.0, 50.0, 240)
    busy_then_idle.samples[-1] = samples(2.0, 50.0, 240).samples[-1]
    assert gpu_warnings(busy_then_idle, running=True) == []  # one idle sample is not an idle GPU


def test_system_jsonl_read_by_a_cell_with_bad_lines_counted(tmp_path: Path):
    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    (cell / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "step": 1, "time": 1.0}) + "\n")
    good = system._encoder.encode(SystemSample(1.0, 9, 50.0, 2 << 20)).decode()
    (cell / "system.jsonl").write_text(good + "\n" + '{"time": "soon"}\n')
    grid = open_path(cell)
    grid.poll()
    assert grid.cells[0].system.last == SystemSample(1.0, 9, 50.0, 2 << 20)
    assert grid.cells[0].series.rejected["bad system.jsonl line"] == 1


def test_idle_gpu_is_a_warning_that_leaves_the_verdict_alone(tmp_path: Path, monkeypatch):
    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    (cell / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "step": 1, "time": 1.0}) + "\n")
    grid = open_path(cell)
    grid.poll()
    before = analyse(grid).cells[0].diagnosis.clean
    grid.cells[0].system = samples(2.0, 50.0, 240)
    monkeypatch.setattr(type(grid.cells[0]), "status", lambda self, alive=None: _running())
    cell_analysis = analyse(grid).cells[0]
    gpu = [f for f in cell_analysis.diagnosis.findings if f.kind.startswith("gpu")]  # the last 3 min of samples
    assert [(f.kind, f.severity, f.message, f.step) for f in gpu] == [
        ("gpu_idle", "warn", "gpu0 busy under 10% of the time for 3 min", None)
    ]
    assert cell_analysis.diagnosis.clean == before


def _running():
    from prefwatch.run import jobs

    return jobs.CellStatus(jobs.RUNNING)


@pytest.mark.parametrize(
    "size,text", [(512, "512B"), (3 << 20, "3.0M"), (412 << 20, "412M"), (int(1.5 * 2**30), "1.5G")]
)
def test_sizes(size, text):
    assert system._size(size) == text


def test_monitor_panel_shows_the_system_line_while_running(tmp_path: Path, monkeypatch):
    from prefwatch.tui.widgets.cell_panel import status_line
    from prefwatch.view.model import cell_view

    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    (cell / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "step": 1, "time": 1.0}) + "\n")
    grid = open_path(cell)
    grid.poll()
    grid.cells[0].system = SystemLog([SystemSample(1.0, 9, 98.4, 412 << 20)])
    finished = cell_view(analyse(grid).cells[0])
    monkeypatch.setattr(type(grid.cells[0]), "status", lambda self, alive=None: _running())
    running = cell_view(analyse(grid).cells[0])
    assert "cpu 98% 412M" in status_line(running).plain
    assert finished.system is None and "cpu" not in status_line(finished).plain
    assert running.version != finished.version
    from prefwatch.tui.widgets.summary import summary_text
    from prefwatch.view.model import grid_view

    view = grid_view(analyse(grid))
    assert view.machines == ["?: 1 cell cpu 98% 412M"]  # no host recorded: "?"
    assert "?: 1 cell cpu 98% 412M" in summary_text(view, "live").plain


def test_machine_lines_sum_cells_and_show_each_gpu_once():
    gpu = GpuSample(0, 80.0, 30 << 30, 80 << 30)
    newer = GpuSample(0, 90.0, 31 << 30, 80 << 30)
    samples = [
        SystemSample(1.0, 1, 100.0, 1 << 30, (gpu,), "node-a"),
        SystemSample(2.0, 2, 50.0, 1 << 30, (newer,), "node-a"),
        SystemSample(2.0, 3, 25.0, 512 << 20, (), "node-b"),
    ]
    assert system.machine_lines(samples) == [
        "node-a: 2 cells cpu 150% 2.0G  gpu0 90% 31.0/80.0G",
        "node-b: 1 cell cpu 25% 512M",
    ]


def test_status_shows_a_running_cells_system_line_and_its_machine(tmp_path: Path, capsys):
    import time

    from prefwatch.cli import main

    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    now = time.time()
    (cell / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "step": 1, "time": now}) + "\n")
    sample = SystemSample(now, 9, 98.4, 412 << 20, (), "node-a")
    (cell / "system.jsonl").write_bytes(system._encoder.encode(sample) + b"\n")
    assert main(["status", str(cell)]) == 0
    out = capsys.readouterr().out
    assert "cpu 98% 412M" in out and "node-a: 1 cell cpu 98% 412M" in out
