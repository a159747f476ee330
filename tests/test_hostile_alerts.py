"""Alerts against endpoints that misbehave, with a real HTTP server on 127.0.0.1 (tests/webhook_receiver.py),
real commands and a real supervisor: an answer that is not HTTP, one trickled a byte at a time, a 429 asking
for a day's wait, a server that never answers. Every try is bounded in total time, every failure is
retried and logged with the host, the count of undelivered alerts is true, and a grid whose webhook
hangs can be resumed at once. The verdict names failed and stopped cells as such."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import prefwatch, status, wait_for
from webhook_receiver import SECRET_PATH, Receiver

from prefwatch.act import alerts
from prefwatch.act.alerts import Alert, AlertKind, Dispatcher
from prefwatch.files import rundir
from prefwatch.run import jobs
from prefwatch.run.backend import is_alive

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_runs" / "tiny-demo"


def alert(text: str, kind: AlertKind = AlertKind.FINDING) -> Alert:
    return Alert(kind, "g", "warn", text, text, cell="c", key=text)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def serve(receivers: list[Receiver], **how: object) -> Receiver:
    receiver = Receiver(**how)  # type: ignore[arg-type]
    receivers.append(receiver)
    return receiver


# ---- Each way a webhook can misbehave --------------------------------------------------------------


def test_an_answer_that_is_not_http_is_a_failed_try_logged_and_later_alerts_still_go(tmp_path, receivers):
    """BadStatusLine escaped the delivery thread: no retry, no log line, and every later alert was lost."""
    receiver = serve(receivers, mode="garbage")
    logged: list[str] = []
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], logged.append, 0, backoff=0.01, retries=2)
    dispatcher.send([alert("one")])
    wait_for(lambda: any("failed after 2 tries" in line for line in logged), 30, "the failure to be logged")
    assert receiver.attempts == 2
    assert logged[0].startswith("alerts: try 1 of 2 to webhook 127.0.0.1 failed: not an HTTP answer (")
    assert logged[-1].startswith("alerts: delivery to webhook 127.0.0.1 failed after 2 tries: not an HTTP answer")
    receiver.mode = "ok"  # the endpoint recovers: the next alert (the verdict, say) goes through
    dispatcher.send([alert("the verdict", AlertKind.VERDICT)])
    wait_for(lambda: receiver.bodies, 30, "the later alert to arrive")
    dispatcher.close(drain=30)
    assert receiver.texts() == ["the verdict"]  # a verdict alone goes as it is
    assert logged[-1] == "alerts: 1 of 2 alert(s) not delivered to webhook 127.0.0.1"
    assert SECRET_PATH not in "".join(logged)


def test_an_answer_trickled_a_byte_at_a_time_is_cut_short_at_the_tries_time_limit(tmp_path, receivers):
    """A byte every half second resets a per-read timeout forever: the limit is on the whole try."""
    receiver = serve(receivers, mode="trickle", trickle_seconds=0.5)
    logged: list[str] = []
    sink = alerts.WebhookSink(receiver.url, timeout=2)
    dispatcher = Dispatcher(tmp_path, [sink], logged.append, 0, backoff=0.01, retries=2)
    dispatcher.send([alert("one")])
    wait_for(lambda: dispatcher.failed == 1, 60, "both tries to be cut short")
    assert receiver.attempts == 2
    assert logged == [
        "alerts: try 1 of 2 to webhook 127.0.0.1 failed: no complete answer within 2 s; again in 0.01 s",
        "alerts: delivery to webhook 127.0.0.1 failed after 2 tries: no complete answer within 2 s",
    ]
    dispatcher.close(drain=10)


def test_a_retry_after_of_a_day_is_capped(tmp_path, receivers, monkeypatch):
    """429 with Retry-After: 100000 put the delivery thread to sleep for 27 hours."""
    monkeypatch.setattr(alerts, "MAX_BACKOFF_SECONDS", 0.5, raising=False)
    receiver = serve(receivers, fail_first=1, status=429, retry_after="100000")
    logged: list[str] = []
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], logged.append, 0)
    dispatcher.send([alert("one")])
    wait_for(lambda: receiver.bodies, 60, "the post after a capped Retry-After")
    dispatcher.close(drain=10)
    assert receiver.attempts == 2 and receiver.texts() == ["[g] one"]
    assert logged == [
        "alerts: try 1 of 5 to webhook 127.0.0.1 failed: HTTP 429; again in 0.5 s",
        "alerts: delivered to webhook 127.0.0.1 on try 2",
    ]


def test_the_count_of_undelivered_alerts_is_true_when_none_got_through(tmp_path, receivers):
    """Three alerts, none delivered: the exit line said "0" (the thread had died) or "2" (a queue's size)."""
    refusing = serve(receivers, mode="garbage")
    logged: list[str] = []
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(refusing.url)], logged.append, 0, backoff=0.01, retries=2)
    dispatcher.send([alert("one"), alert("two"), alert("three")])
    dispatcher.close(drain=30)
    assert logged[-1] == "alerts: 3 of 3 alert(s) not delivered to webhook 127.0.0.1"

    silent = serve(receivers, mode="silent")
    logged = []
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(silent.url, timeout=60)], logged.append, 0)
    dispatcher.send([alert("one")])
    wait_for(lambda: silent.attempts == 1, 30, "the post to reach the silent server")
    dispatcher.send([alert("two"), alert("three")])
    dispatcher.close(drain=1)  # the first try is still waiting for an answer: it is cut short
    assert logged[-1] == "alerts: 3 of 3 alert(s) not delivered to webhook 127.0.0.1 (still trying after 1 s)"
    assert dispatcher._thread is not None and not dispatcher._thread.is_alive()


def test_a_log_that_cannot_be_written_does_not_end_the_deliveries(tmp_path, receivers):
    """supervisor.log on a full disk: the failed try's log line raises, and the delivery goes on."""
    receiver = serve(receivers, fail_first=1)

    def full(line: str) -> None:
        raise OSError(28, "No space left on device")

    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], full, 0, backoff=0.01)
    dispatcher.send([alert("one")])
    wait_for(lambda: receiver.bodies, 30, "the second try")
    dispatcher.send([alert("the verdict", AlertKind.VERDICT)])
    wait_for(lambda: len(receiver.bodies) == 2, 30, "the later alert")
    dispatcher.close(drain=10)
    assert receiver.texts() == ["[g] one", "the verdict"]


# ---- The command ----------------------------------------------------------------------------------------


FAIL_ONCE = """
import pathlib, sys
mark = pathlib.Path(sys.argv[1])
if not mark.exists():
    mark.write_text("failed once")
    raise SystemExit(3)
pathlib.Path(sys.argv[2]).write_text(sys.argv[-1])
"""


def test_a_command_that_fails_is_tried_again_and_one_that_hangs_is_killed(tmp_path):
    logged: list[str] = []
    got = tmp_path / "got.txt"
    sink = alerts.CommandSink([sys.executable, "-c", FAIL_ONCE, str(tmp_path / "mark"), str(got)])
    dispatcher = Dispatcher(tmp_path, [sink], logged.append, 0, backoff=0.01)
    dispatcher.send([alert("one")])
    dispatcher.close(drain=60)
    assert got.read_text() == "[g] one"
    assert logged == [
        f"alerts: try 1 of 5 to command {sys.executable} failed: exit status 3; again in 0.01 s",
        f"alerts: delivered to command {sys.executable} on try 2",
    ]

    logged = []
    hanging = alerts.CommandSink([sys.executable, "-c", "import time; time.sleep(600)"], timeout=1)
    dispatcher = Dispatcher(tmp_path, [hanging], logged.append, 0, backoff=0.01, retries=2)
    dispatcher.send([alert("two")])
    dispatcher.close(drain=60)
    assert logged == [
        f"alerts: try 1 of 2 to command {sys.executable} failed: did not end within 1 s; again in 0.01 s",
        f"alerts: delivery to command {sys.executable} failed after 2 tries: did not end within 1 s",
        f"alerts: 1 of 1 alert(s) not delivered to command {sys.executable}",
    ]


# ---- A real supervisor whose webhook never answers -------------------------------------------------------


def failing_grid(tmp_path: Path, webhook: str) -> Path:
    """One tiny cell whose data has no pairs: its job fails within seconds of starting."""
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n' * 20)
    text = (ROOT / "examples" / "tiny-grid.toml").read_text()
    text = text.replace('name = "tiny-demo"', 'name = "hang"').replace('name = "tiny-sales"', f'name = "{bad}"')
    text = text.replace('objectives = ["dpo", "simpo"]', 'objectives = ["dpo"]').replace(
        "ranks = [16, 8]", "ranks = [8]"
    )
    grid = tmp_path / "hang.toml"
    grid.write_text(text + f'\n[alerts]\nwebhook = "{webhook}"\nmin_interval = 0\n')
    return grid


def test_a_webhook_that_never_answers_does_not_hold_up_a_resume(tmp_path, receivers):
    """The grid ended, its supervisor waited on a silent webhook: --resume waited 30 s, then said "its
    supervisor is still running; stop it first" while ``stop`` said nothing ran."""
    receiver = serve(receivers, mode="silent")
    grid = failing_grid(tmp_path, receiver.url)
    launched = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs"))
    assert launched.returncode == 0, launched.stderr
    run_dir = tmp_path / "runs" / "hang"
    first = json.loads((run_dir / rundir.LOCK_FILE).read_text())
    wait_for(lambda: status(run_dir, "dpo-r8").state == jobs.FAILED, 300, "the cell's job to fail")
    wait_for(lambda: receiver.attempts >= 1, 120, "the supervisor's last alerts to reach the silent webhook")
    wait_for(lambda: jobs.supervisor_alive(run_dir) is False, 60, "the grid to be handed over")
    assert is_alive(first["pid"], first["pid_start"])  # still delivering, but no longer the grid's supervisor
    verdict = [a for a in alerts.read_sent(run_dir) if a.kind == AlertKind.VERDICT]
    assert verdict and "still running" not in verdict[0].text and "dpo-r8" in verdict[0].text
    assert "failed" in verdict[0].text.split("would decide it:", 1)[-1]

    resumed = prefwatch("launch", str(run_dir), "--resume", "--detach", timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming dpo-r8" in resumed.stdout
    second = json.loads((run_dir / rundir.LOCK_FILE).read_text())
    assert second["pid"] != first["pid"]
    wait_for(lambda: status(run_dir, "dpo-r8").state == jobs.FAILED, 300, "the resumed cell's job to fail")
    log = (run_dir / "supervisor.log").read_text()
    assert log.count("alerts go to webhook 127.0.0.1") == 2  # the new supervisor sends this grid's alerts
    assert "another follower sends this grid's alerts" not in log
    receiver.close()  # the silent answers end: both supervisors' last tries fail and they exit
    for pid, start in ((first["pid"], first["pid_start"]), (second["pid"], second["pid_start"])):
        wait_for(lambda pid=pid, start=start: not is_alive(pid, start), 120, f"supervisor {pid} to exit")


# ---- The verdict's words for cells that failed or were stopped ---------------------------------------------


def ended_early(tmp_path: Path, webhook: str | None = None) -> Path:
    """The sample grid's real logs, one cell recorded failed and one stopped by the policy."""
    run = tmp_path / "tiny-demo"
    shutil.copytree(SAMPLE, run)
    for cell, fields in {
        "dpo-r8": {"state": "failed", "exit_code": 1},
        "simpo-r16": {"state": "stopped", "stop_reason": "non_finite", "exit_code": None},
    }.items():
        path = run / "cells" / cell / "status.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    if webhook:
        with open(run / "grid.toml", "a") as f:
            f.write(f'\n[alerts]\nwebhook = "{webhook}"\nmin_interval = 0\n')
    return run


def test_the_verdict_names_failed_and_stopped_cells_as_such(tmp_path, receivers):
    receiver = serve(receivers)
    run = ended_early(tmp_path, receiver.url)
    report = json.loads(prefwatch("report", str(run), "--format", "json").stdout)
    needs = " ".join(report["verdict"]["needs"])
    assert "still running" not in needs, needs
    assert "dpo-r8 failed (exit 1)" in needs and "simpo-r16 stopped (non_finite)" in needs
    attached = prefwatch("attach", str(run), "--headless", timeout=120)
    assert attached.returncode == 0, attached.stderr
    verdict = [t for t in receiver.texts() if "Verdict:" in t]
    assert len(verdict) == 1 and "still running" not in verdict[0]
    assert "dpo-r8 failed (exit 1)" in verdict[0] and "simpo-r16 stopped (non_finite)" in verdict[0]
