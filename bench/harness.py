"""Shared pieces of the benchmarks: test grids on disk, a log writer process, apps started in a real
terminal (tmux) or headless, and CPU and memory of a process read from /proc.

Everything is written under a folder the caller gives (a ``tempfile.TemporaryDirectory``), never a
fixed path. CPU is measured from outside the app (utime + stime of its process, all threads), so
the monitor and the floor app are measured the same way, and while both follow the same files at
the same time (same load on the machine: the ratio survives a busy machine better than either figure).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from textual.drivers.headless_driver import HeadlessDriver

HERE = Path(__file__).resolve().parent


def compile_package() -> None:
    """Write prefwatch's bytecode, as ``pip install`` does, before anything is timed.

    An editable install leaves that to the first import, and with PYTHONDONTWRITEBYTECODE set (this
    machine's environment has it) every process compiles all of prefwatch from source again: 80 ms
    a start that no installed copy pays, while the floors' libraries come compiled. Stale files only.
    """
    import compileall

    compileall.compile_dir(HERE.parent / "prefwatch", quiet=1)


compile_package()  # every benchmark imports this module first
OBJECTIVES = ("dpo", "simpo")
RANKS = (4, 8, 16, 32)
TICKS = os.sysconf("SC_CLK_TCK")


class NullTerminal(HeadlessDriver):
    """Renders frames like a real terminal driver (ANSI included), writes them nowhere, counts them.

    Textual's headless driver skips the ANSI step, which would flatter the figures.
    """

    frames = 0
    last_write = 0.0

    @property
    def is_headless(self) -> bool:
        return False

    def write(self, data: str) -> None:
        NullTerminal.frames += 1
        NullTerminal.last_write = time.perf_counter()

    def flush(self) -> None:
        pass


def cell_names(cells: int) -> list[tuple[str, str, int, int]]:
    """(folder name, objective, rank, seed) for ``cells`` cells: objectives x ranks x seeds (64: 2 x 4 x 8)."""
    names = []
    for index in range(cells):
        objective = OBJECTIVES[index % len(OBJECTIVES)]
        rank = RANKS[(index // len(OBJECTIVES)) % len(RANKS)]
        seed = index // (len(OBJECTIVES) * len(RANKS))
        names.append((f"{objective}-r{rank}-seed{seed}", objective, rank, seed))
    return names


def make_folder(
    root: Path, cells: int, layout: str, writer_pid: int | None, lines: int = 0, finished: bool = False
) -> Path:
    """A grid of ``cells`` cells: a prefwatch run directory ("rundir") or a plain folder of
    metrics.jsonl files ("plain"). ``lines`` pre-filled lines a cell; ``finished``: with TRL's
    end-of-training record after them."""
    from prefwatch.files import rundir
    from prefwatch.run import jobs

    grid = root / f"{layout}-{cells}"
    for index, (name, objective, rank, seed) in enumerate(cell_names(cells)):
        if layout == "rundir":
            cell_dir = grid / rundir.CELLS_DIR / name
            cell_dir.mkdir(parents=True)
            info = {"index": index, "objective": objective, "rank": rank, "seed": seed, "train": {"max_steps": 100_000}}
            rundir.write_json_atomic(cell_dir / rundir.CELL_FILE, info)
            status: dict = {"state": jobs.RUNNING if writer_pid else jobs.FINISHED, "host": None}
            if writer_pid:
                status.update(pid=writer_pid, pid_start=jobs.process_start_time(writer_pid))
            rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)
        else:
            cell_dir = grid / name
            cell_dir.mkdir(parents=True)
        write_lines(cell_dir / rundir.METRICS_FILE, lines, seed=index)
        if finished:
            with open(cell_dir / rundir.METRICS_FILE, "a") as f:
                f.write(f'{{"train_runtime": {lines * 0.5}, "train_loss": 0.4, "step": {lines}}}\n')
    return grid


def record_text(step: int, now: float, seed: int = 0) -> str:
    """A TRL-shaped train line (every 10th step an eval line after it), as the writer writes them."""
    import math

    wiggle = math.sin(step * 0.7 + seed)
    text = (
        f'{{"loss": {0.69 - 0.0001 * step:.6f}, "grad_norm": {1 + 0.1 * wiggle:.6f}, "learning_rate": 5e-06, '
        f'"rewards/chosen": {0.01 * step:.6f}, "rewards/rejected": {-0.01 * step:.6f}, '
        f'"rewards/accuracies": 0.7, "rewards/margins": {0.02 * step + 0.1 * wiggle:.6f}, '
        f'"logps/chosen": {-50 - wiggle:.6f}, "logps/rejected": {-52 + wiggle:.6f}, '
        f'"epoch": {step / 1000:.4f}, "step": {step}, "time": {now:.6f}}}\n'
    )
    if step % 10 == 0:
        text += (
            f'{{"eval_loss": 0.6, "eval_rewards/margins": {0.01 * step:.6f}, "eval_rewards/accuracies": '
            f'{0.6 + 0.05 * wiggle:.4f}, "eval_rewards/chosen": {0.005 * step:.6f}, "eval_rewards/rejected": '
            f'{-0.005 * step:.6f}, "step": {step}, "time": {now:.6f}}}\n'
        )
    return text


def write_lines(path: Path, lines: int, seed: int = 0) -> None:
    start = time.time() - lines * 0.5
    with open(path, "w") as f:
        chunk = []
        for step in range(1, lines + 1):
            chunk.append(record_text(step, start + 0.5 * step, seed))
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[4])
    from harness import record_text
    files, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
    first, stagger = int(sys.argv[5]), sys.argv[6] == "1"
    step, start = first, time.time()
    while time.time() - start < seconds:
        step += 1
        for i, path in enumerate(files):
            if stagger:  # the cells' lines spread over the interval, as independent jobs log
                time.sleep(max(0.0, start + (step - first - 1 + i / len(files)) / rate - time.time()))
            with open(path, "a") as f:
                f.write(record_text(step, time.time(), i))
        time.sleep(max(0.0, start + (step - first) / rate - time.time()))
    """
)


def start_writer(
    grid: Path, rate: float, seconds: float, first_step: int = 0, stagger: bool = False
) -> subprocess.Popen:
    """A separate process appending a line to every cell's log ``rate`` times a second (its CPU is not
    counted); ``stagger``: each cell at its own moment of the interval, not all at once."""
    files = sorted(str(p) for p in grid.rglob("metrics.jsonl"))
    command = [sys.executable, "-c", WRITER, ",".join(files), str(rate), str(seconds), str(HERE), str(first_step)]
    return subprocess.Popen([*command, "1" if stagger else "0"])


def idle_writer() -> subprocess.Popen:
    """A process that only sleeps: the "job" a run directory's status.json names, alive while measuring."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])


def monitor_command(folder: Path, headless: bool, mode: str = "attach") -> list[str]:
    if headless:
        return [sys.executable, str(HERE / "headless.py"), mode, str(folder)]
    return [sys.executable, "-m", "prefwatch", mode, str(folder)]


def floor_command(folder: Path, headless: bool) -> list[str]:
    return [sys.executable, str(HERE / "floor_app.py"), str(folder), *(["--headless"] if headless else [])]


@dataclass
class Running:
    """An app under measurement: its pid, and how to end it."""

    pid: int
    session: str | None = None  # tmux session name
    process: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.session is not None:
            subprocess.run(["tmux", "kill-session", "-t", self.session], stderr=subprocess.DEVNULL, check=False)
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_app(command: list[str], terminal: bool, name: str, size: tuple[int, int] = (160, 48)) -> Running:
    """Start an app in a detached tmux session of ``size`` (a real terminal), or headless (NullTerminal)."""
    if not terminal:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return Running(process.pid, process=process)
    session = f"pwbench-{os.getpid()}-{name}"
    line = "exec " + " ".join(shlex.quote(c) for c in command)
    for attempt in range(3):
        # A tmux server that another user of the machine ends at the wrong moment ("server exited
        # unexpectedly") fails the start: a new server is started by the next try.
        started = subprocess.run(
            ["tmux", "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), line],
            capture_output=True,
            text=True,
        )
        if started.returncode == 0:
            break
        if attempt == 2:
            raise RuntimeError(f"tmux new-session {session}: {started.stderr.strip()}")
        time.sleep(1)
    pid = subprocess.run(
        ["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Running(int(pid), session=session)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def thread_runtimes(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU of each live thread of a process (/proc/<pid>/task/<tid>/schedstat), {} where unreadable."""
    runtimes = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                runtimes[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return runtimes


def measure_cpu(pids: list[int], seconds: float) -> list[float]:
    """Share of one core each process used over ``seconds``, in percent.

    Clock ticks (utime + stime, 10 ms) are coarse for a process using 1 % of a core over 10 s (ten
    ticks: one more or less moves a ratio by 10 %), so the figure is the sum of the threads'
    nanosecond run times where the kernel keeps them. A thread that ended within the window takes
    its run time with it; when the ticks then say more than the threads do, the ticks are used.
    """
    before = [(cpu_seconds(p), thread_runtimes(p)) for p in pids]
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    shares = []
    for pid, (ticks_before, threads_before) in zip(pids, before):
        ticks = cpu_seconds(pid) - ticks_before
        threads_after = thread_runtimes(pid)
        fine = sum(ns - threads_before.get(tid, 0) for tid, ns in threads_after.items()) / 1e9
        usable = threads_before and set(threads_before) <= set(threads_after) and ticks <= fine + 2 / TICKS
        shares.append(100 * (fine if usable else ticks) / wall)
    return shares


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
