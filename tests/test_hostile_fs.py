"""Hostile and unlucky file systems (issue 22), each with the real thing: links and named pipes planted in a
run directory, folders another user keeps private, a full disk (a tmpfs mounted for the test), a run
directory moved under the monitor, a log rewritten in place, rows stamped in the future, modes that follow
the umask, a grid too large to list.

The second user: the folders are handed to ``nobody`` and prefwatch runs as root without the capabilities
that let root ignore permissions (setpriv), which is what any other user meets; where that cannot be done
the test says why it skips.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for
from hostile import BAD_CELL, GOOD_CELL, SAMPLE, sample_grid

from prefwatch.act.alerts import Alert, AlertKind, Dispatcher
from prefwatch.analysis.analyse import analyse
from prefwatch.files import rundir
from prefwatch.files.grid import load_grid
from prefwatch.ingest.discover import open_path
from prefwatch.run import jobs

ROOT = Path(__file__).resolve().parent.parent
PIPES_IN_A_CELL = ["metrics.jsonl", "eval_pairs.jsonl", "system.jsonl", "data.json", "cell.json", "status.json"]


def cli(*args: str, timeout: float = 120, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """``prefwatch ARGS`` in a process of its own, with a wide terminal (one table row per cell line)."""
    env = {**os.environ, "COLUMNS": "400"}
    preexec = (lambda: os.umask(umask)) if umask is not None else None  # noqa: E731
    return subprocess.run(
        [sys.executable, "-m", "prefwatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=preexec,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error of a command that refused, with exit status 2 and no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_status(cell_dir: Path, **record: object) -> None:
    (cell_dir / rundir.STATUS_FILE).write_text(json.dumps(record))


def plant_pipe(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def let_go(pipes: list[Path]) -> None:
    """Open and close the writing end of each pipe: a reader stuck on one (the bug) gets an end of file."""
    for _ in range(20):
        for pipe in pipes:
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        time.sleep(0.05)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# ---- 1. links planted in a run directory ------------------------------------------------------------------


def test_a_launch_lock_linked_outside_the_run_is_refused_by_resume_and_its_target_kept(tmp_path: Path) -> None:
    grid = sample_grid(tmp_path)
    write_status(grid / "cells" / BAD_CELL, state="stopped")  # a cell to resume
    outside = tmp_path / "outside.txt"
    outside.write_text("someone's file\n")
    (grid / rundir.LOCK_FILE).symlink_to(outside)
    try:
        result = cli("launch", str(grid), "--resume", "--detach")
    finally:
        jobs.request_stop(grid, grace=5)  # whatever started (before the fix: a supervisor and a job)
    assert outside.read_text() == "someone's file\n"
    line = one_line(result)
    assert "launch.lock" in line and "symbolic link" in line, line
    assert jobs.read_status(grid / "cells" / BAD_CELL).state == jobs.STOPPED  # nothing was changed first


def test_an_alerts_log_linked_outside_the_run_is_not_appended_to(tmp_path: Path) -> None:
    grid = sample_grid(tmp_path)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b"")
    (grid / rundir.ALERTS_FILE).symlink_to(outside)
    said: list[str] = []
    Dispatcher(grid, [], said.append).send([Alert(AlertKind.END, "grid", "info", "dpo-r8: finished", "dpo-r8")])
    assert outside.read_bytes() == b""
    assert len(said) == 1 and "alerts.jsonl" in said[0] and "symbolic link" in said[0], said


@pytest.mark.parametrize("name", [rundir.STOP_REQUEST, rundir.STATUS_LOCK])
def test_stop_creates_nothing_through_a_planted_link(name: str, tmp_path: Path) -> None:
    grid = sample_grid(tmp_path)
    cell = grid / "cells" / BAD_CELL
    write_status(cell, state="queued")
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir()
    (cell / name).symlink_to(target)
    result = cli("stop", str(grid), BAD_CELL)
    assert not target.exists()
    line = one_line(result)
    assert name in line and "symbolic link" in line, line


# ---- 2. named pipes in place of the files prefwatch reads -------------------------------------------------


@pytest.mark.parametrize("name", [*PIPES_IN_A_CELL, rundir.LOCK_FILE])
def test_a_named_pipe_in_place_of_a_file_hangs_neither_report_nor_status(name: str, tmp_path: Path) -> None:
    grid = sample_grid(tmp_path)
    pipe = plant_pipe(grid / name if name == rundir.LOCK_FILE else grid / "cells" / BAD_CELL / name)
    try:
        for command in ("report", "status"):
            result = cli(command, str(grid), timeout=90)
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode in (0, 3), (command, result.stderr)
            assert GOOD_CELL in result.stdout
        if name == rundir.STATUS_FILE:
            assert "not a regular file" in result.stdout, result.stdout
    finally:
        let_go([pipe])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_the_monitor_draws_and_quits_with_named_pipes_in_place_of_files(tmp_path: Path) -> None:
    from test_commands import exit_status
    from test_monitor_faults import Terminal

    grid = sample_grid(tmp_path)
    cells = grid / "cells"
    pipes = [plant_pipe(cells / "dpo-r16" / "metrics.jsonl"), plant_pipe(cells / "simpo-r16" / "cell.json")]
    pipes += [plant_pipe(cells / "simpo-r8" / n) for n in ("eval_pairs.jsonl", "system.jsonl", "data.json")]
    pipes.append(plant_pipe(grid / rundir.LOCK_FILE))
    terminal = Terminal()
    exited = tmp_path / "exit-status"
    try:
        terminal.start("pipes", grid, size=(120, 40), command="attach", status=exited)
        terminal.wait_for("pipes", lambda s: "4 cells: 4 finished" in s)
        terminal.keys("pipes", "q")
        assert exit_status(exited) == 0
    finally:
        let_go(pipes)
        terminal.close()


@pytest.mark.parametrize("name", [rundir.CELL_FILE, rundir.STATUS_FILE, rundir.LOCK_FILE])
def test_the_supervisor_is_not_held_by_a_named_pipe(name: str, tmp_path: Path) -> None:
    grid = sample_grid(tmp_path)
    pipe = plant_pipe(grid / name if name == rundir.LOCK_FILE else grid / "cells" / BAD_CELL / name)
    log_path = grid / rundir.SUPERVISOR_LOG
    log_path.write_bytes(b"")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefwatch.act.supervise", str(grid)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: process.poll() is not None or b"supervising" in log_path.read_bytes(), 60, "a start")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        let_go([pipe])
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text
    if name == rundir.LOCK_FILE:
        assert code == 2 and "launch.lock" in text and "a named pipe" in text, text
    else:  # ended by itself (every cell had), or by the SIGTERM while it delivered its last alerts
        assert code in (0, -signal.SIGTERM), text


# ---- 3. folders that cannot be read -----------------------------------------------------------------------

OTHER = "nobody"


def other_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root, to hand folders to a second user and read them without root's privileges")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's privileges")
    try:
        return pwd.getpwnam(OTHER)
    except KeyError:
        pytest.skip(f"no user {OTHER!r} on this machine to hand folders to")


UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def without_privileges(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``prefwatch ARGS`` as root without the capabilities that ignore permissions: what another user meets."""
    probe = subprocess.run([*UNPRIVILEGED, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop root's privileges here: {probe.stderr.strip()}")
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [*UNPRIVILEGED, sys.executable, "-m", "prefwatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user can pass through (pytest's own temporary folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="prefwatch-shared-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_folder_of_runs_with_another_users_private_folder_lists_it_as_not_read(shared: Path) -> None:
    user = other_user()
    runs = shared / "runs"
    for cell in (GOOD_CELL, "simpo-r8"):
        (runs / cell).mkdir(parents=True)
        shutil.copy(SAMPLE / "cells" / cell / rundir.METRICS_FILE, runs / cell / rundir.METRICS_FILE)
    private = runs / "colleague"
    (private / "dpo-r16").mkdir(parents=True)
    shutil.copy(SAMPLE / "cells" / "dpo-r16" / rundir.METRICS_FILE, private / "dpo-r16" / rundir.METRICS_FILE)
    for path in (private, *private.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    private.chmod(0o700)
    result = without_privileges("report", str(runs))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 3), result.stderr
    assert GOOD_CELL in result.stdout and "simpo-r8" in result.stdout
    not_read = [line for line in result.stdout.splitlines() if "not read" in line and "colleague" in line]
    assert len(not_read) == 1 and "Permission denied" in not_read[0], result.stdout


@pytest.mark.parametrize("path", ["/", "/proc"])
def test_report_of_the_root_folder_and_proc_ends_in_one_line(path: str) -> None:
    other_user()
    result = without_privileges("report", path, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 2:  # nothing to read: one line saying so, and why
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"prefwatch: {path}"), result.stderr[-3000:]
        assert len(lines[0]) < 2000
    else:  # logs found somewhere below: a report, the folders not read summed up in one line
        assert result.returncode in (0, 3), result.stderr[-3000:]
        assert sum("not read" in line for line in result.stdout.splitlines()) <= 11, result.stdout[-3000:]


# ---- 4. a full disk --------------------------------------------------------------------------------------

STAND_IN = """
import sys
from prefwatch.act import supervise
from prefwatch.run.backend import LaunchSpec

PROGRAM = "import json, time; open('metrics.jsonl', 'a').write(json.dumps({'step': 1, 'loss': 0.5, 'time': time.time()}) + chr(10))"
real = supervise.Supervisor.spec

def spec(self, cell_dir, resume, slot):
    made = real(self, cell_dir, resume, slot)
    return LaunchSpec([*made.argv, "--", sys.executable, "-c", PROGRAM], made.env, made.device)

supervise.Supervisor.spec = spec
raise SystemExit(supervise.main(sys.argv[1:]))
"""


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (as root, where mount is allowed); the test says why where it is not."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_the_supervisor_survives_a_full_disk_and_carries_on_when_space_returns(tmpfs: Path) -> None:
    run_dir = jobs.create_run_dir(load_grid(ROOT / "examples" / "tiny-grid.toml"), tmpfs)
    rundir.write_json_atomic(run_dir / rundir.RESOURCES_FILE, {"devices": "cpu", "max_parallel": 1})
    before = digest(run_dir)
    log_path = run_dir / rundir.SUPERVISOR_LOG
    log = open(log_path, "ab")
    filler = fill(tmpfs)
    process = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, str(run_dir)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    try:
        # While the disk is full: the supervisor lives, nothing starts, every cell reads queued and says why.
        wait_for(lambda: "disk full" in cli("status", str(run_dir)).stdout or process.poll() is not None, 60, "a word")
        shown = cli("status", str(run_dir)).stdout
        assert process.poll() is None, log_path.read_text()
        rows = [line for line in shown.splitlines() if "-r" in line and ("dpo" in line or "simpo" in line)]
        assert len(rows) == 4 and all("queued (disk full)" in row for row in rows), shown
        assert "lost" not in shown
        filler.unlink()
        # Space again: the cells start and end; what was written before is whole; the log says what happened.
        code = process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert "disk full" in text and "all cells ended" in text, text
    assert all(jobs.read_status(c).state == jobs.FINISHED for c in rundir.cell_dirs(run_dir))
    after = digest(run_dir)
    for name in (rundir.GRID_FILE, *(f"cells/{c}/{rundir.CELL_FILE}" for c in ("dpo-r16", "simpo-r8"))):
        assert after[name] == before[name], name


# ---- 5. the run directory moved under the monitor ---------------------------------------------------------


def test_a_moved_run_keeps_the_states_its_records_gave_and_says_it_is_gone(tmp_path: Path) -> None:
    grid_dir = sample_grid(tmp_path)
    grid = open_path(grid_dir)
    grid.poll()
    jobs.hand_statuses(grid)
    first = analyse(grid)
    assert all(c.status().state == jobs.FINISHED for c in grid.cells) and first.verdict.decisive
    grid_dir.rename(tmp_path / "moved")
    grid.poll()
    jobs.hand_statuses(grid)
    assert [c.status().state for c in grid.cells] == [jobs.FINISHED] * 4
    assert all(jobs.describe(c.status()) == "finished (run directory gone)" for c in grid.cells)
    assert analyse(grid).verdict.decisive


def test_the_monitor_of_a_moved_run_offers_to_stop_nothing(tmp_path: Path) -> None:
    import asyncio

    from test_tui import app_for
    from test_tui import wait_for as wait_on_screen

    from prefwatch.tui.screens.confirm import ConfirmScreen

    async def body() -> None:
        grid_dir = sample_grid(tmp_path)
        app = app_for(grid_dir, mode="live")
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_on_screen(pilot, lambda: app.view is not None and len(app.view.cells) == 4)
            await wait_on_screen(pilot, lambda: all(c.state == jobs.FINISHED for c in app.view.cells))
            await wait_on_screen(pilot, lambda: app.feed.follower is not None)  # the monitor follows the run now
            grid_dir.rename(tmp_path / "moved")
            await wait_on_screen(pilot, lambda: all("run directory gone" in c.status for c in app.view.cells))
            assert all(c.state == jobs.FINISHED for c in app.view.cells)
            await pilot.press("X")
            await pilot.pause(0.5)
            assert not isinstance(app.screen, ConfirmScreen)
            assert any("ended already" in n.message for n in app._notifications)

    asyncio.run(body())


# ---- 6. a log rewritten in place --------------------------------------------------------------------------


def rows(loss: float, count: int, at: float) -> bytes:
    lines = [
        json.dumps({"step": s, "loss": loss, "rewards/margins": loss, "time": at + s}) for s in range(1, count + 1)
    ]
    return ("\n".join(lines) + "\n").encode()


def test_a_log_rewritten_in_place_and_longer_is_a_new_segment(tmp_path: Path) -> None:
    cell = tmp_path / "runs" / "dpo-r8"
    cell.mkdir(parents=True)
    log = cell / rundir.METRICS_FILE
    log.write_bytes(rows(0.5, 20, 1000.0))
    grid = open_path(tmp_path / "runs")
    grid.poll()
    series = grid.cells[0].series
    assert len(series.train) == 20
    inode = log.stat().st_ino
    with open(log, "r+b") as f:  # another run of the same name writes over it from its start: same inode
        f.write(rows(0.9, 30, 5000.0))
    assert log.stat().st_ino == inode
    grid.poll()
    series = grid.cells[0].series
    assert list(series.train.steps) == list(range(1, 31)), series.train.steps
    assert set(series.train.column("loss").tolist()) == {0.9}
    assert not series.rejected


# ---- 7. rows stamped in the future ------------------------------------------------------------------------


def test_rows_stamped_in_the_future_are_clamped_to_the_files_time_and_named(tmp_path: Path) -> None:
    cell = tmp_path / "runs" / "dpo-r8"
    cell.mkdir(parents=True)
    log = cell / rundir.METRICS_FILE
    log.write_bytes(rows(0.5, 20, time.time() + 86400))  # a day ahead; no end-of-training record
    written = time.time() - 7200
    os.utime(log, (written, written))  # and untouched for two hours
    result = cli("status", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "dpo-r8" in line)
    assert "incomplete" in row and "running" not in row, row
    assert "2 h ago" in row and "future" in row, row


# ---- 8. modes follow the umask ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_the_run_directory_and_its_records_follow_the_umask(umask: int, folder: int, file: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        run_dir = jobs.create_run_dir(load_grid(ROOT / "examples" / "tiny-grid.toml"), tmp_path)
    finally:
        os.umask(old)
    cell = run_dir / "cells" / "dpo-r8"
    stopped = cli("stop", str(run_dir), "dpo-r8", umask=umask)  # a real process rewrites status.json
    assert stopped.returncode == 0, stopped.stderr
    assert jobs.read_status(cell).state == jobs.STOPPED
    assert (mode(run_dir), mode(cell)) == (folder, folder)
    for path in (cell / rundir.STATUS_FILE, cell / rundir.CELL_FILE, run_dir / rundir.RESOURCES_FILE):
        assert mode(path) == file, (path, oct(mode(path)))


def test_a_colleague_reads_a_shared_run(shared: Path) -> None:
    user = other_user()
    old = os.umask(0o022)
    try:
        run_dir = jobs.create_run_dir(load_grid(ROOT / "examples" / "tiny-grid.toml"), shared)
    finally:
        os.umask(old)
    assert cli("stop", str(run_dir), "dpo-r8", umask=0o022).returncode == 0
    for path in (run_dir, *run_dir.rglob("*")):  # the run is the colleague's; we read it
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    result = without_privileges("status", str(run_dir))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "Permission denied" not in result.stdout, result.stdout
    row = next(line for line in result.stdout.splitlines() if "dpo-r8 " in line)
    assert "stopped" in row, result.stdout
    assert sum("queued" in line for line in result.stdout.splitlines()) == 3, result.stdout


# ---- 9. a grid too large to list --------------------------------------------------------------------------


def grid_file(tmp_path: Path, ranks: int, betas: int, rates: int) -> Path:
    text = (ROOT / "examples" / "tiny-grid.toml").read_text()
    sweep = (
        f"ranks = {list(range(1, ranks + 1))}\n"
        f"betas = {[round(0.01 * i, 2) for i in range(1, betas + 1)]}\n"
        f"learning_rates = {[float(f'{i}e-5') for i in range(1, rates + 1)]}\n"
    )
    path = tmp_path / f"sweep-{ranks}-{betas}-{rates}.toml"
    path.write_text(text.replace("ranks = [16, 8]\n", sweep))
    return path


def test_a_grid_product_over_the_cap_is_refused_in_one_line_unless_forced(tmp_path: Path) -> None:
    huge = grid_file(tmp_path, ranks=100, betas=100, rates=50)  # x 2 objectives: 10^6 cells
    line = one_line(cli("launch", str(huge), "--check", timeout=300))
    assert line.startswith(f"prefwatch: {huge}:") and "[grid]" in line, line
    assert "1000000 cells" in line and "4096" in line and "--force" in line, line
    over = grid_file(tmp_path, ranks=41, betas=50, rates=1)  # 4,100 cells: over the cap, listed when forced
    assert cli("launch", str(over), "--check").returncode == 2
    forced = cli("launch", str(over), "--check", "--force")
    assert forced.returncode == 0 and "4100 cells" in forced.stdout, forced.stderr
