"""Alerts without a screen: what is news (once), and delivery to a real HTTP receiver and a real command."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from helpers import wait_for
from webhook_receiver import Receiver

from prefwatch.act import alerts
from prefwatch.act.alerts import Alert, AlertKind, AlertPolicy, CellFacts, Dispatcher, FindingFacts
from prefwatch.files.grid import GridError, load_grid


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def cell(cell_id: str, state: str, *findings: tuple[str, str], status: str | None = None) -> CellFacts:
    return CellFacts(
        cell_id, state, status or state, tuple(FindingFacts(k, s, f"{k} message", 10) for k, s in findings)
    )


def alert(text: str, kind: AlertKind = AlertKind.FINDING) -> Alert:
    return Alert(kind, "g", "warn", text, text, cell="c", key=text)


# ---- What is news ---------------------------------------------------------------------------------


def test_each_finding_once_each_end_once_and_info_never():
    policy = AlertPolicy("g")
    first = policy.news([cell("a", "running", ("non_finite", "error"), ("brevity_bias", "info"))])
    assert [a.key for a in first] == ["finding:a:non_finite:error"]
    again = policy.news([cell("a", "running", ("non_finite", "error"))])
    assert again == []
    ended = policy.news([cell("a", "stopped", ("non_finite", "error"), status="stopped (non_finite)")])
    assert [(a.kind, a.text, a.severity) for a in ended] == [(AlertKind.END, "a: stopped (non_finite)", "warn")]
    assert policy.news([cell("a", "stopped", status="stopped (non_finite)")]) == []
    # restarted and failed again: a new end
    policy.news([cell("a", "running")])
    assert [a.text for a in policy.news([cell("a", "failed", status="failed (signal 9)")])] == ["a: failed (signal 9)"]


def test_the_baseline_is_not_news_and_the_verdict_comes_once():
    policy = AlertPolicy("g")
    policy.baseline([cell("a", "finished", ("overoptimization", "warn"))])
    assert policy.news([cell("a", "finished", ("overoptimization", "warn"))]) == []
    verdict = policy.verdict("DPO at r=8", ["dpo wins 3 more pairs"])
    assert verdict is not None and "Verdict: DPO at r=8" in verdict.text and "• dpo wins 3 more pairs" in verdict.text
    assert policy.verdict("DPO at r=8", []) is None


def test_a_restarted_follower_does_not_repeat_what_alerts_jsonl_holds(tmp_path):
    first = AlertPolicy("g")
    dispatcher = Dispatcher(tmp_path, [], print)
    dispatcher.send(first.news([cell("a", "finished", ("saturation", "warn"))]))
    dispatcher.send([first.verdict("x", [])])  # type: ignore[list-item]
    with open(tmp_path / alerts.ALERTS_FILE, "ab") as f:
        f.write(b'{"kind": "finding", "torn')  # a torn last line is skipped
    second = AlertPolicy("g")
    second.restore(alerts.read_sent(tmp_path))
    assert second.news([cell("a", "finished", ("saturation", "warn"))]) == []
    assert second.verdict("x", []) is None
    assert second.verdict("y", []) is not None  # a resumed grid that ends with another verdict says so
    records = [json.loads(line) for line in (tmp_path / alerts.ALERTS_FILE).read_text().splitlines()[:3]]
    assert [r["kind"] for r in records] == ["end", "finding", "verdict"]


# ---- Delivery -------------------------------------------------------------------------------------


def test_webhook_posts_a_body_slack_and_discord_accept(tmp_path, receiver):
    logged: list[str] = []
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], logged.append, min_interval=0)
    dispatcher.send([alert("dpo-r16: non_finite @ step 40: loss is NaN")])
    wait_for(lambda: receiver.bodies, 10, "the post")
    dispatcher.close()
    body = receiver.bodies[0]
    assert body["text"] == body["content"] == "[g] dpo-r16: non_finite @ step 40: loss is NaN"
    assert body["allowed_mentions"] == {"parse": []}
    assert dispatcher.delivered == 1 and logged == []


def test_text_from_logs_cannot_ping_or_link_in_slack_or_discord(tmp_path, receiver):
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], print, min_interval=0)
    dispatcher.send([alert("<!channel> <http://x|click> & @everyone")])
    dispatcher.close()
    body = receiver.bodies[0]
    assert body["text"] == "[g] &lt;!channel&gt; &lt;http://x|click&gt; &amp; @everyone"
    assert body["content"] == "[g] <!channel> <http://x|click> & @everyone" and body["allowed_mentions"] == {
        "parse": []
    }


def test_a_failing_webhook_is_retried_with_backoff_and_recovers(tmp_path):
    receiver = Receiver(fail_first=2)
    try:
        logged: list[str] = []
        dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], logged.append, 0, backoff=0.05)
        dispatcher.send([alert("one")])
        wait_for(lambda: receiver.bodies, 10, "the post after two failures")
        dispatcher.close()
        assert receiver.attempts == 3 and receiver.texts() == ["[g] one"]
        assert logged == [  # each failed try logged with the host, then the delivery
            "alerts: try 1 of 5 to webhook 127.0.0.1 failed: HTTP 500; again in 0.05 s",
            "alerts: try 2 of 5 to webhook 127.0.0.1 failed: HTTP 500; again in 0.1 s",
            "alerts: delivered to webhook 127.0.0.1 on try 3",
        ]
    finally:
        receiver.close()


def test_a_webhook_that_never_recovers_is_logged_with_its_host_only(tmp_path):
    receiver = Receiver(fail_first=100)
    try:
        logged: list[str] = []
        dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], logged.append, 0, backoff=0.01, retries=3)
        dispatcher.send([alert("one")])
        dispatcher.close(drain=10)
        assert receiver.attempts == 3 and dispatcher.failed == 1
        assert logged == [
            "alerts: try 1 of 3 to webhook 127.0.0.1 failed: HTTP 500; again in 0.01 s",
            "alerts: try 2 of 3 to webhook 127.0.0.1 failed: HTTP 500; again in 0.02 s",
            "alerts: delivery to webhook 127.0.0.1 failed after 3 tries: HTTP 500",
            "alerts: 1 of 1 alert(s) not delivered to webhook 127.0.0.1",
        ]
        assert "s3cr3t" not in "".join(logged)
    finally:
        receiver.close()


def test_a_client_error_is_not_retried_and_an_unreachable_host_does_not_block(tmp_path):
    receiver = Receiver(fail_first=100, status=404)
    try:
        logged: list[str] = []
        dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], logged.append, 0, backoff=0.01)
        dispatcher.send([alert("one")])
        dispatcher.close(drain=10)
        assert receiver.attempts == 1 and logged == [
            "alerts: delivery to webhook 127.0.0.1 failed after 1 tries: HTTP 404",
            "alerts: 1 of 1 alert(s) not delivered to webhook 127.0.0.1",
        ]
    finally:
        receiver.close()
    port = receiver.server.server_address[1]  # closed now: nothing listens
    logged = []
    dispatcher = Dispatcher(
        tmp_path, [alerts.WebhookSink(f"http://127.0.0.1:{port}/x/secret")], logged.append, 0, 0.01, 2
    )
    dispatcher.send([alert("two")])  # returns at once: delivery is the thread's business
    dispatcher.close(drain=10)
    assert logged[0].startswith("alerts: try 1 of 2 to webhook 127.0.0.1 failed: cannot connect")
    assert logged[1].startswith("alerts: delivery to webhook 127.0.0.1 failed after 2 tries: cannot connect")
    assert "secret" not in "".join(logged)


def test_alerts_inside_the_rate_limit_go_together_in_one_message(tmp_path, receiver):
    dispatcher = Dispatcher(tmp_path, [alerts.WebhookSink(receiver.url)], print, min_interval=30)
    dispatcher.send([alert("first")])
    wait_for(lambda: receiver.bodies, 10, "the first post")
    dispatcher.send([alert("second")])
    dispatcher.send([alert("third")])
    dispatcher.close()  # closing sends what waits, without waiting out the interval
    assert receiver.texts() == ["[g] first", "[g] second\nthird"]
    lines = (tmp_path / alerts.ALERTS_FILE).read_text().splitlines()
    assert len(lines) == 3  # the record holds every alert, at once


def test_a_command_gets_the_message_as_its_last_argument_and_json_on_stdin(tmp_path):
    out = tmp_path / "got.json"
    script = "import json, sys; json.dump({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}, open(sys.argv[1], 'w'))"
    sink = alerts.CommandSink([sys.executable, "-c", script, str(out)])
    dispatcher = Dispatcher(tmp_path, [sink], print, min_interval=0)
    dispatcher.send([alert("a; rm -rf / $(echo no shell)")])
    dispatcher.close()
    got = json.loads(out.read_text())
    assert got["argv"] == [str(out), "[g] a; rm -rf / $(echo no shell)"]
    assert json.loads(got["stdin"])["text"] == "a; rm -rf / $(echo no shell)"


def test_a_failing_command_is_logged(tmp_path):
    logged: list[str] = []
    dispatcher = Dispatcher(
        tmp_path, [alerts.CommandSink([sys.executable, "-c", "raise SystemExit(3)"])], logged.append, 0, 0.01, 2
    )
    dispatcher.send([alert("x")])
    dispatcher.close()
    assert logged == [  # a notifier's failure may pass (its own network): tried again like a webhook's
        f"alerts: try 1 of 2 to command {sys.executable} failed: exit status 3; again in 0.01 s",
        f"alerts: delivery to command {sys.executable} failed after 2 tries: exit status 3",
        f"alerts: 1 of 1 alert(s) not delivered to command {sys.executable}",
    ]
    logged = []
    missing = Dispatcher(tmp_path, [alerts.CommandSink([str(tmp_path / "no-such-program")])], logged.append, 0)
    missing.send([alert("x")])
    missing.close()
    assert (
        logged[0]
        == f"alerts: delivery to command {tmp_path / 'no-such-program'} failed after 1 tries: FileNotFoundError"
    )


# ---- Settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, message",
    [
        ('[alerts]\nwebhook = "ftp://x"', ":2: [alerts] webhook: must be an http(s) URL"),
        ('[alerts]\ncommand = "notify-send"', ":2: [alerts] command: must be a list of strings"),
        ('[alerts]\ncommand = [""]', ":2: [alerts] command: the first entry is the program to run"),
        ('[policy]\nstop_on = ["nan"]', ":2: [policy] stop_on: unknown reason 'nan'"),
        ('[policy]\nstop_on = ["overoptimisation"]', "(did you mean 'overoptimization'?)"),
        ("[policy]\npatience = 0", ":2: [policy] patience: must be > 0, got 0"),
        ("[policy]\npatiense = 2", ":2: [policy] patiense: unknown key (did you mean 'patience'?)"),
    ],
)
def test_bad_alert_and_policy_settings_are_one_line_errors(tmp_path, table, message):
    path = tmp_path / "grid.toml"
    path.write_text(f"{table}\n")
    with pytest.raises(GridError) as error:
        load_grid(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_alert_and_policy_defaults(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text("")
    settings = load_grid(path).settings
    assert (settings.policy.stop_on, settings.policy.patience) == (["non_finite"], 3)
    assert (settings.alerts.webhook, settings.alerts.command, settings.alerts.min_interval) == (None, [], 10.0)


def test_the_url_shows_its_host_only():
    assert alerts.url_host("https://hooks.slack.com/services/T/B/secret") == "hooks.slack.com"
    assert alerts.WebhookSink("https://discord.com/api/webhooks/1/tok").name == "webhook discord.com"


def test_long_messages_fit_discord():
    text = alerts.message_of([alert("x" * 5000)])
    assert len(text) <= 2000 and text.endswith("…")


def test_a_verdict_batched_with_long_events_is_kept_whole_and_the_events_counted():
    """The grid's end often comes as one batch: the last cells' findings, then the verdict. Cut at the
    message's length, the verdict's last lines (which cells failed) were lost; now the events give way."""
    events = [alert(f"cell-{i}: finding {'x' * 300}") for i in range(10)]
    verdict = alert("g ended. Verdict: dpo r=8\n• would decide it: dpo-r8 failed (exit 1)", AlertKind.VERDICT)
    text = alerts.message_of([*events, verdict])
    assert len(text) <= alerts.MAX_MESSAGE
    assert text.endswith("• would decide it: dpo-r8 failed (exit 1)")  # the verdict whole, at the end
    kept = text.count("cell-")
    assert 0 < kept < 10 and f"… and {10 - kept} more events" in text  # the rest counted, not dropped silently
    assert text.startswith("[g] cell-0: finding")
    short = alerts.message_of([alert("cell-0: finished"), verdict])
    assert short == "[g] cell-0: finished\n" + verdict.text  # what fits is sent as before
