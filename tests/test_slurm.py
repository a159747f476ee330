"""The Slurm backend: sbatch/squeue/scancel through a real one-node Slurm cluster started on this machine
(controller and node daemon on localhost, configured from a temporary folder through SLURM_CONF), plus
unit tests of what cannot run here (several GPUs per cell) and of Slurm's answers.

The cluster is set up as docs/slurm-tests.md records: auth/none on Slurm 22.05 (munge from 23.11 on),
proctrack/linuxproc, no accounting, MinJobAge=600. When the daemons cannot start, the tests say why:
they fail (or, where Slurm is not installed and PREFWATCH_REQUIRE_SLURM is unset, skip with the reason
as a warning). ``.ci/run`` installs the packages and sets PREFWATCH_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from helpers import last_step, prefwatch, status, wait_for

from prefwatch.files import rundir
from prefwatch.files.grid import load_grid
from prefwatch.files.settings import CellSettings, SlurmSettings
from prefwatch.ingest.discover import open_path
from prefwatch.run import jobs, slurm
from prefwatch.run.backend import launch_spec, train_command

ROOT = Path(__file__).resolve().parent.parent
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")


# ---- the grids ---------------------------------------------------------------------------------


def slurm_grid(folder: Path, name: str, steps: int, objectives: str = '["dpo", "simpo"]', data: str = "") -> Path:
    """A two-cell tiny grid (DPO and SimPO at r=8) on the Slurm backend; one CPU per cell."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\n'
        f"[train]\nmax_steps = {steps}\neval_every = 10\nsave_every = 1000\n"
        f"[grid]\nobjectives = {objectives}\nranks = [8]\n"
        + (f'[data]\nname = "{data}"\n' if data else "")
        + '[resources]\nbackend = "slurm"\n'
        '[slurm]\ncpus_per_cell = 1\ntime = "00:10:00"\noptions = ["--comment=prefwatch test"]\n'
    )
    return path


# ---- unit tests: no daemons ---------------------------------------------------------------------


def test_slurm_grid_validates_and_resolves(tmp_path: Path) -> None:
    grid = load_grid(slurm_grid(tmp_path, "g", 20))
    assert grid.settings.resources.backend == "slurm"
    assert grid.settings.slurm == SlurmSettings(cpus_per_cell=1, time="00:10:00", options=["--comment=prefwatch test"])
    assert [c.id for c in grid.cells] == ["dpo-r8", "simpo-r8"]
    assert load_grid(ROOT / "examples" / "tiny-grid.toml").settings.resources.backend == "local"


def test_sbatch_command_is_an_argument_list(tmp_path: Path) -> None:
    cell_dir = tmp_path / "runs" / "g" / "cells" / "dpo-r8"
    settings = {
        "partition": "gpu",
        "gpus_per_cell": 2,
        "cpus_per_cell": 8,
        "mem": "32G",
        "time": "1-00:00:00",
        "account": "lab; rm -rf ~",  # never reaches a shell: one argument, as it is
        "options": ["--qos=high", "--exclusive"],
    }
    command = slurm.sbatch_command(cell_dir, "g", SlurmSettings(**settings), cell_dir / "job.sh")
    assert command == [
        "sbatch",
        "--parsable",
        "--job-name=g/dpo-r8",
        f"--output={cell_dir}/stdout.log",
        "--open-mode=append",
        f"--chdir={cell_dir}",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=8",
        "--partition=gpu",
        "--gres=gpu:2",
        "--mem=32G",
        "--time=1-00:00:00",
        "--account=lab; rm -rf ~",
        "--qos=high",
        "--exclusive",
        f"{cell_dir}/job.sh",
    ]
    minimal = slurm.sbatch_command(cell_dir, "g", SlurmSettings(cpus_per_cell=1), cell_dir / "job.sh")
    assert not any(a.startswith(("--partition", "--gres", "--mem", "--time", "--account")) for a in minimal)


def test_multi_gpu_cells_start_under_torchrun(tmp_path: Path) -> None:
    """Several GPUs per cell: one process per GPU under torchrun --standalone (a free rendezvous port,
    so two such cells on one node do not collide). Only the command is checked: no GPU here."""
    cell_json = tmp_path / "c" / "cell.json"
    assert train_command(cell_json, gpus=0, python="py") == ["py", "-m", "prefwatch.train", str(cell_json)]
    assert train_command(cell_json, gpus=1, resume=True, python="py") == [
        "py",
        "-m",
        "prefwatch.train",
        str(cell_json),
        "--resume",
    ]
    assert train_command(cell_json, gpus=4, python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "prefwatch.train",
        str(cell_json),
    ]
    # torchrun as installed accepts exactly these flags (parsed, not run).
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(train_command(cell_json, gpus=4, python="py")[3:])
    assert parsed.standalone and parsed.nproc_per_node == "4" and parsed.module
    assert parsed.training_script == "prefwatch.train" and parsed.training_script_args == [str(cell_json)]


def test_metrics_are_written_by_the_main_process_only() -> None:
    """Under torchrun every rank runs the trainer; the callbacks and the per-pair log write on rank 0 only."""
    for module in ("callback/__init__.py", "train/run.py", "train/pairs.py"):
        text = (ROOT / "prefwatch" / module).read_text()
        assert "is_world_process_zero" in text, module
    assert "gather_for_metrics" in (ROOT / "prefwatch" / "train" / "pairs.py").read_text()


def test_job_script_quotes_every_value_and_shares_the_launch_spec(tmp_path: Path) -> None:
    cell_dir = tmp_path / "it's a $dir" / "cells" / "dpo-r8"
    cell_dir.mkdir(parents=True)
    cell = {"id": "dpo-r8", "threads": 2, "model": {"name": "tiny"}, "data": {"name": "tiny-sales"}}
    (cell_dir / "cell.json").write_text(json.dumps(cell))
    spec = launch_spec(cell_dir, resume=True, gpus=2, scheduler_places_gpus=True)
    script = slurm.job_script(cell_dir, msgspec.convert(cell, CellSettings), spec)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh" and "OMP_NUM_THREADS=2" in script and "MKL_NUM_THREADS=2" in script
    assert "CUDA_VISIBLE_DEVICES" not in script  # Slurm sets it for a GPU cell
    job_line = next(line for line in lines if line.startswith("exec "))
    assert shlex.split(job_line)[1:] == spec.argv
    assert spec.argv[1:] == ["-m", "prefwatch.run.job", str(cell_dir / "cell.json"), "--resume", "--gpus=2"]
    assert f"cd {shlex.quote(str(cell_dir))} || exit 1" in lines
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    # One spec for both backends: the same environment, offline hub access included (it once drifted).
    local = launch_spec(cell_dir, resume=True, gpu_index=None)
    assert local.argv[:4] == spec.argv[:4] and "HF_HUB_OFFLINE=1" in script
    assert {k: v for k, v in local.env.items() if k != "CUDA_VISIBLE_DEVICES"} == spec.env
    cpu = slurm.job_script(cell_dir, CellSettings(), launch_spec(cell_dir, resume=False, scheduler_places_gpus=True))
    assert "CUDA_VISIBLE_DEVICES=''" in cpu  # sbatch passes the submitting shell's GPUs on; a CPU cell sees none


def test_squeue_and_sacct_answers_parse() -> None:
    jobs_seen = slurm.parse_squeue(
        "11|PENDING|Resources|0||\n12|RUNNING|None|0|node07|\n13|FAILED|NonZeroExitCode|512|node07|\n"
        "14|CANCELLED|None|15|node07|\n15|COMPLETED|None|0|node[01-02]|\ngarbage\n"
    )
    assert jobs_seen["11"] == slurm.JobInfo("PENDING", "Resources", 0, None, "")
    assert jobs_seen["13"].exit_code == 2 and jobs_seen["13"].signal is None
    assert jobs_seen["14"].signal == 15 and jobs_seen["14"].ended and not jobs_seen["12"].ended
    accounted = slurm.parse_sacct(
        "21|COMPLETED|0:0|n1\n21.batch|COMPLETED|0:0|n1\n22|CANCELLED by 1000|0:15|n1\n23|TIMEOUT|0:0|n2\n"
        "24|OUT_OF_MEMORY|0:125|n2\n"
    )
    assert set(accounted) == {"21", "22", "23", "24"}
    assert accounted["22"].state == "CANCELLED" and accounted["22"].signal == 15
    assert accounted["23"].state == "TIMEOUT" and accounted["23"].exit_code == 0


@pytest.mark.parametrize(
    ("info", "recorded", "state", "described"),
    [
        (slurm.JobInfo("PENDING", "Resources"), {}, jobs.QUEUED, "queued (Resources)"),
        (slurm.JobInfo("RUNNING", node="n7"), {}, jobs.RUNNING, "running"),
        (slurm.JobInfo("COMPLETING", node="n7"), {}, jobs.RUNNING, "running"),
        (slurm.JobInfo("COMPLETED", exit_code=0), {}, jobs.FINISHED, "finished"),
        (slurm.JobInfo("FAILED", exit_code=2), {}, jobs.FAILED, "failed (exit 2)"),
        (slurm.JobInfo("FAILED", exit_code=137), {"signal": 9}, jobs.FAILED, "failed (signal 9)"),
        (slurm.JobInfo("FAILED", signal=9), {}, jobs.FAILED, "failed (signal 9)"),
        (slurm.JobInfo("TIMEOUT", signal=15), {}, jobs.FAILED, "failed (timeout)"),
        (slurm.JobInfo("OUT_OF_MEMORY", exit_code=0), {}, jobs.FAILED, "failed (out of memory)"),
        (slurm.JobInfo("NODE_FAIL"), {}, jobs.FAILED, "failed (node fail)"),
        (slurm.JobInfo("CANCELLED", signal=15), {}, jobs.STOPPED, "stopped"),
        (None, {"state": "running"}, jobs.LOST, "lost"),  # gone from Slurm, no end recorded
        (None, {"state": "finished", "exit_code": 0}, jobs.FINISHED, "finished"),  # the job script recorded it
        (None, {"state": "failed", "exit_code": 1}, jobs.FAILED, "failed (exit 1)"),
        (slurm.JobInfo("RUNNING"), {"state": "stopped"}, jobs.STOPPED, "stopped"),  # prefwatch stop recorded it
    ],
)
def test_slurm_states_map_onto_cell_states(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    info: slurm.JobInfo | None,
    recorded: dict,
    state: str,
    described: str,
) -> None:
    cell_dir = tmp_path / "g" / "cells" / "c"
    cell_dir.mkdir(parents=True)
    rundir.write_json_atomic(
        cell_dir / "status.json", {"state": "queued", "backend": "slurm", "job_id": "7", **recorded}
    )
    monkeypatch.setattr(slurm, "job_info", lambda _dir, _id: info)
    status = jobs.read_status(cell_dir)
    assert (status.state, status.describe()) == (state, described)


def test_unreachable_slurm_keeps_the_recorded_state_and_says_why(tmp_path: Path, monkeypatch) -> None:
    cell_dir = tmp_path / "g" / "cells" / "c"
    cell_dir.mkdir(parents=True)
    rundir.write_json_atomic(cell_dir / "status.json", {"state": "running", "backend": "slurm", "job_id": "7"})
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue
    slurm.forget_cache()
    status = jobs.read_status(cell_dir)
    assert status.state == jobs.RUNNING and "squeue not found" in (status.error or "")


def test_the_job_records_its_start_and_end(tmp_path: Path) -> None:
    """The job (prefwatch.run.job, what job.sh runs) records its node and Slurm job, then its exit, itself."""
    cell_dir = tmp_path / "c"
    cell_dir.mkdir()
    (cell_dir / "cell.json").write_text("{}")
    job = [sys.executable, "-m", "prefwatch.run.job", str(cell_dir / "cell.json"), "--", sys.executable, "-c"]
    env = {**os.environ, "SLURM_JOB_ID": "5"}
    rundir.write_json_atomic(cell_dir / "status.json", {"state": "queued", "backend": "slurm", "job_id": "5"})
    ran = subprocess.run([*job, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], env=env)
    assert ran.returncode == 128 + 9
    raw = rundir.read_json(cell_dir / "status.json")
    assert raw["state"] == "failed" and raw["signal"] == 9 and raw["job_id"] == raw["slurm_job"] == "5"
    assert raw["node"] == socket.gethostname() and raw["end_time"] >= raw["start_time"]
    # A cell stopped before its job started: the job leaves it stopped and runs nothing.
    rundir.write_json_atomic(cell_dir / "status.json", {"state": "stopped", "backend": "slurm"})
    assert subprocess.run([*job, "raise SystemExit(3)"], env=env).returncode == 0
    assert rundir.read_json(cell_dir / "status.json") == {"state": "stopped", "backend": "slurm"}


def test_launch_without_sbatch_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from prefwatch.cli import main

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    grid = slurm_grid(tmp_path, "nosbatch", 20)
    monkeypatch.setattr("prefwatch.cli._require_training_packages", lambda: None)
    assert main(["launch", str(grid), "--detach", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch not found" in err and "login node" in err
    assert not (tmp_path / "runs" / "nosbatch").exists()


# ---- a one-node Slurm cluster on this machine ---------------------------------------------------


@dataclass
class Cluster:
    folder: Path
    conf: Path
    auth: str


def _unavailable(reason: str) -> None:
    if os.environ.get("PREFWATCH_REQUIRE_SLURM"):
        pytest.fail(f"Slurm tests required (PREFWATCH_REQUIRE_SLURM) but cannot run: {reason}")
    warnings.warn(f"Slurm tests skipped: {reason}", stacklevel=2)
    pytest.skip(f"Slurm tests cannot run here: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_version() -> tuple[int, int]:
    out = subprocess.run(["slurmctld", "-V"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _real_memory() -> int:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout
    match = re.search(r"RealMemory=(\d+)", out)
    return min(int(match.group(1)), 4000) if match else 1000


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start_munge(folder: Path) -> subprocess.Popen[bytes]:
    if shutil.which("munged") is None:
        _unavailable(f"Slurm {_slurm_version()} needs munge (no auth/none since 23.11) and munged is not installed")
    sock_dir = folder / "munge"
    sock_dir.mkdir(mode=0o755)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    process = subprocess.Popen(
        [
            "munged",
            "-F",
            "--force",
            "-S",
            str(sock_dir / "sock"),
            f"--key-file={key}",
            f"--log-file={folder / 'munged.log'}",
            f"--pid-file={folder / 'munged.pid'}",
            f"--seed-file={folder / 'munged.seed'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 5
    while not (sock_dir / "sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"munged did not start: {_tail(folder / 'munged.log')}")
        time.sleep(0.05)
    return process


def _write_conf(folder: Path, auth: str) -> Path:
    user = pwd.getpwuid(os.getuid()).pw_name
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    if auth == "munge":
        auth_lines = f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={folder / 'munge' / 'sock'}\n"
    else:
        auth_lines = "AuthType=auth/none\nCredType=cred/none\n"
    conf = folder / "slurm.conf"
    conf.write_text(
        "ClusterName=prefwatch-test\n"
        "SlurmctldHost=localhost\n"
        f"SlurmctldPort={_free_port()}\nSlurmdPort={_free_port()}\n"
        f"SlurmUser={user}\nSlurmdUser={user}\n"
        + auth_lines
        + f"StateSaveLocation={folder / 'state'}\nSlurmdSpoolDir={folder / 'spool'}\n"
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}\nSlurmdPidFile={folder / 'slurmd.pid'}\n"
        f"SlurmctldLogFile={folder / 'slurmctld.log'}\nSlurmdLogFile={folder / 'slurmd.log'}\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
        "MailProg=/bin/true\nSchedulerParameters=sched_min_interval=0,batch_sched_delay=0\n"
        "MinJobAge=600\nReturnToService=2\n"
        "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 "
        f"RealMemory={_real_memory()}\n"
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n"
    )
    return conf


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """slurmctld + slurmd on localhost in a fresh folder; afterwards: cancel, wait, SIGTERM."""
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        _unavailable(
            f"{', '.join(missing)} not installed (Debian: apt-get install -y --no-install-recommends "
            "slurmd slurmctld slurm-client munge; .ci/run does it)"
        )
    folder = tmp_path_factory.mktemp("slurm")
    auth = os.environ.get("PREFWATCH_SLURM_AUTH") or ("none" if _slurm_version() < (23, 11) else "munge")
    daemons: list[subprocess.Popen[bytes]] = []
    if auth == "munge":
        daemons.append(_start_munge(folder))
    conf = _write_conf(folder, auth)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    slurm.forget_cache()
    try:
        for command in (
            ["slurmctld", "-D", "-f", str(conf)],
            ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
        ):
            with open(folder / f"{command[0]}.out", "wb") as out:
                daemons.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 20
        state = ""
        while state != "idle":
            dead = [p for p in daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail(
                    f"the one-node Slurm cluster did not come up (node state {state!r}"
                    f"{', a daemon exited' if dead else ''}): "
                    f"slurmctld: {_tail(folder / 'slurmctld.log')} // slurmd: {_tail(folder / 'slurmd.log')} "
                    f"// {_tail(folder / 'slurmctld.out', 3)} {_tail(folder / 'slurmd.out', 3)}"
                )
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            time.sleep(0.1)
        yield Cluster(folder, conf, auth)
    finally:
        _shut_down(daemons)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        slurm.forget_cache()


def _shut_down(daemons: list[subprocess.Popen[bytes]]) -> None:
    """Jobs outlive the daemons (slurmstepd ignores SIGTERM): cancel them and wait, then stop the daemons."""
    user = pwd.getpwuid(os.getuid()).pw_name
    subprocess.run(["scancel", f"--user={user}"], capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S"], capture_output=True, text=True, timeout=30)
        if left.returncode != 0 or not left.stdout.strip():
            break
        time.sleep(0.2)
    for process in reversed(daemons):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(daemons):
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_grid_runs_through_sbatch_to_completion(cluster: Cluster, tmp_path: Path) -> None:
    """Two cells run side by side on the node's two CPUs; a third (a bad data file) waits for a CPU, then fails."""
    started = time.monotonic()
    out = tmp_path / "runs"
    launched = prefwatch("launch", str(slurm_grid(tmp_path, "sl", 20)), "--detach", "--out", str(out))
    assert launched.returncode == 0, launched.stderr
    assert "Slurm jobs" in launched.stdout
    (tmp_path / "bad.jsonl").write_text("not json\n")
    bad_grid = slurm_grid(tmp_path, "slbad", 20, objectives='["dpo"]', data="bad.jsonl")
    bad_launch = prefwatch("launch", str(bad_grid), "--detach", "--out", str(out))
    assert bad_launch.returncode == 0, bad_launch.stderr
    run_dir, bad_dir = out / "sl", out / "slbad"
    cells = ("dpo-r8", "simpo-r8")
    for cell in cells:
        raw = rundir.read_json(run_dir / "cells" / cell / "status.json")
        assert raw["backend"] == "slurm" and raw["job_id"].isdigit()
        assert (run_dir / "cells" / cell / "job.sh").is_file()

    # live: both run on the node while the third job waits for a CPU; the monitor's source says the same.
    wait_for(lambda: all(status(run_dir, c).state == jobs.RUNNING for c in cells), 30, "both cells running")
    queued = status(bad_dir, "dpo-r8")
    assert queued.state == jobs.QUEUED and queued.slurm_reason in ("Resources", "Priority"), queued
    waiting = prefwatch("status", str(bad_dir))
    assert f"queued ({queued.slurm_reason})" in waiting.stdout and "(Slurm)" in waiting.stdout, waiting.stdout
    wait_for(lambda: last_step(run_dir, "dpo-r8") >= 2, 60, "dpo-r8 to log")
    source = open_path(run_dir)
    source.poll()
    jobs.hand_statuses(source)
    assert source.supervised is None
    assert {c.id: c.status().state for c in source.cells} == dict.fromkeys(cells, jobs.RUNNING)
    assert next(c for c in source.cells if c.id == "dpo-r8").series.last_step >= 2
    shown = prefwatch("status", str(run_dir))
    assert shown.returncode == 0 and "running" in shown.stdout and "localhost" in shown.stdout

    wait_for(lambda: all(status(run_dir, c).state in jobs.ENDED_STATES for c in cells), 90, "the grid to end")
    for cell in cells:
        done = status(run_dir, cell)
        assert done.state == jobs.FINISHED and done.slurm_state == "COMPLETED", done
        assert done.exit_code == 0 and done.record.node == "localhost"
        assert last_step(run_dir, cell) == 20
        assert "train_runtime" in (run_dir / "cells" / cell / "metrics.jsonl").read_text().splitlines()[-1]
        assert f"[{cell}] done: 20 steps" in (run_dir / "cells" / cell / "stdout.log").read_text()
    shown = prefwatch("status", str(run_dir))
    job_ids = [rundir.read_json(run_dir / "cells" / c / "status.json")["job_id"] for c in cells]
    assert shown.stdout.count("finished") == 2 and all(j in shown.stdout for j in job_ids), shown.stdout

    wait_for(lambda: status(bad_dir, "dpo-r8").state in jobs.ENDED_STATES, 60, "the bad cell to end")
    failed = status(bad_dir, "dpo-r8")
    assert failed.state == jobs.FAILED and failed.describe() == "failed (exit 2)", failed
    assert "not valid JSON" in (bad_dir / "cells" / "dpo-r8" / "stdout.log").read_text()

    # Slurm's record and the job script's agree; with Slurm's record gone (MinJobAge), the job's own stays.
    slurm.forget_cache()
    assert subprocess.run(["scontrol", "show", "job", "-o", job_ids[0]], capture_output=True, text=True).stdout.count(
        "JobState=COMPLETED"
    )
    print(f"two-cell Slurm grid, 20 steps: {time.monotonic() - started:.1f} s")


def monitor_text(run_dir: Path, until: str, count: int, timeout: float = 20.0) -> str:
    """The live monitor, headless (Textual's Pilot), on the grid; its screen once ``until`` shows ``count`` times."""
    import asyncio

    from prefwatch.tui.app import MonitorApp

    async def watch() -> str:
        app = MonitorApp(open_path(run_dir), mode="live")
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + timeout
            while True:
                text = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
                if text.count(until) >= count or time.monotonic() > deadline:
                    return text
                await pilot.pause(0.2)

    return asyncio.run(watch())


def test_stop_cancels_through_scancel(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    launched = prefwatch("launch", str(slurm_grid(tmp_path, "slstop", 2000)), "--detach", "--out", str(out))
    assert launched.returncode == 0, launched.stderr
    run_dir = out / "slstop"
    wait_for(lambda: last_step(run_dir, "dpo-r8") >= 2, 60, "dpo-r8 to log")
    job = rundir.read_json(run_dir / "cells" / "dpo-r8" / "status.json")["job_id"]
    screen = monitor_text(run_dir, "running  step", 2)
    assert screen.count("running  step") == 2 and "/2000" in screen, screen

    stopped = prefwatch("stop", str(run_dir), "dpo-r8")
    assert stopped.returncode == 0 and "dpo-r8" in stopped.stdout, stopped.stderr
    assert status(run_dir, "dpo-r8").state == jobs.STOPPED

    def cancelled_in_slurm() -> bool:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        return "JobState=CANCELLED" in shown

    wait_for(cancelled_in_slurm, 30, "Slurm to say CANCELLED")
    slurm.forget_cache()
    after = status(run_dir, "dpo-r8")
    assert after.state == jobs.STOPPED and after.slurm_state == "CANCELLED"
    steps = last_step(run_dir, "dpo-r8")
    time.sleep(1.5)
    assert last_step(run_dir, "dpo-r8") == steps  # the training process is gone, not just relabelled
    assert status(run_dir, "simpo-r8").state in (jobs.RUNNING, jobs.QUEUED)
    screen = monitor_text(run_dir, "stopped  step", 1)
    assert "stopped  step" in screen and "running  step" in screen, screen

    # resume follows the cell Slurm still runs (no second job) and submits the stopped one again, as a new
    # job running `prefwatch.train --resume`; then stop both for good.
    other = rundir.read_json(run_dir / "cells" / "simpo-r8" / "status.json")["job_id"]
    resumed = prefwatch("launch", str(run_dir), "--resume", "--detach")
    assert resumed.returncode == 0 and "Slurm job " in resumed.stdout, resumed.stderr
    assert "resuming dpo-r8" in resumed.stdout and "following simpo-r8 (still running)" in resumed.stdout
    again = rundir.read_json(run_dir / "cells" / "dpo-r8" / "status.json")
    assert again["job_id"] != job and again["previous"]["state"] == "stopped"
    assert rundir.read_json(run_dir / "cells" / "simpo-r8" / "status.json")["job_id"] == other
    assert "--resume" in (run_dir / "cells" / "dpo-r8" / "job.sh").read_text()
    wait_for(lambda: status(run_dir, "dpo-r8").state == jobs.RUNNING, 30, "the resumed cell to run")
    log = run_dir / "cells" / "dpo-r8" / "stdout.log"
    wait_for(lambda: log.read_text().count("[dpo-r8] start:") == 2, 60, "the resumed trainer to start")
    rest = prefwatch("stop", str(run_dir))
    assert rest.returncode == 0 and "simpo-r8" in rest.stdout
    assert [status(run_dir, c).state for c in ("dpo-r8", "simpo-r8")] == [jobs.STOPPED] * 2
    shown = prefwatch("status", str(run_dir))
    assert shown.stdout.count("stopped") == 2, shown.stdout
    wait_for(
        lambda: not subprocess.run(["squeue", "-h", "-t", "PD,R,CG"], capture_output=True, text=True).stdout.strip(),
        30,
        "the jobs to leave the node",
    )
