"""Alerts that reach a person with no screen open: what is news, and where it goes.

``AlertPolicy`` is the one place that decides what is new: each finding of a cell once (info findings
never), each cell's end (finished, failed with its signal or exit, stopped with its reason, lost) once
per run of that cell, and the grid's verdict once when every cell has ended. The monitor's toasts and
the grid's supervisor (or ``attach --headless``) both ask it.

``Dispatcher`` delivers the alerts: every alert at once to ``alerts.jsonl`` in the run directory (the
record, also read back so that a restarted follower does not repeat itself), and to the webhook and
the command at most once per ``min_interval`` seconds, alerts in between folded into one message.
Deliveries run in a background thread with retries and backoff: training never waits on a network.

A webhook URL carries its secret in its path; only its host is ever printed or logged.
This module imports neither Textual nor torch.
"""

from __future__ import annotations

import enum
import functools
import http.client
import json
import queue
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from prefwatch.files import rundir, safe
from prefwatch.files.settings import AlertSettings

ALERTS_FILE = rundir.ALERTS_FILE
END_STATES = frozenset({"finished", "failed", "stopped", "lost"})
# Slack's text and Discord's content: Discord refuses more than 2000 characters.
MAX_MESSAGE = 1900
RETRIES = 5  # deliveries tried per message: backoff 1, 2, 4, 8 s between them (a minute-long outage)
BACKOFF_SECONDS = 1.0
# The longest wait between two tries, a server's Retry-After included: a 429 asking for 100000 s
# would otherwise put the delivery thread to sleep for a day, and every later alert behind it.
MAX_BACKOFF_SECONDS = 30.0
# A try's whole time (connecting, sending and reading together), not a time per read: a server that
# answers one byte every 2 s never lets a per-read timeout fire.
HTTP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
DRAIN_SECONDS = 60.0  # what ``close`` gives the deliveries still waiting
ABORT_SECONDS = 2.0  # a try cut short ends within this: its socket is shut, its process killed


class AlertKind(enum.StrEnum):
    FINDING = "finding"
    END = "end"
    VERDICT = "verdict"


class Alert(msgspec.Struct, frozen=True):
    """One piece of news: a line for a person, with what it is about."""

    kind: AlertKind
    grid: str
    severity: str  # info, warn, error
    text: str  # the whole line: "dpo-r16: non_finite @ step 40: loss is NaN ..."
    short: str  # the toast's line: "dpo-r16: non finite"
    cell: str | None = None
    step: int | None = None
    key: str = ""  # what makes it the same news twice
    time: float = 0.0


class FindingFacts(msgspec.Struct, frozen=True):
    kind: str
    severity: str
    message: str
    step: int | None = None


class CellFacts(msgspec.Struct, frozen=True):
    """What the policy needs of a cell: its state, as read now, and its findings."""

    id: str
    state: str
    status: str  # as a person reads it: "failed (signal 9)", "stopped (non_finite)"
    findings: tuple[FindingFacts, ...] = ()


class AlertPolicy:
    """Decides what is news, once. ``alert_states`` are the states whose arrival is news."""

    def __init__(self, grid: str, alert_states: frozenset[str] = END_STATES) -> None:
        self.grid = grid
        self.alert_states = alert_states
        self._states: dict[str, str] = {}
        self._seen: set[str] = set()

    def baseline(self, cells: Iterable[CellFacts]) -> None:
        """Take what is there now as known (the monitor's first view): only later changes are news."""
        for cell in cells:
            self._states[cell.id] = cell.state
            self._seen.update(_finding_key(cell.id, f) for f in cell.findings)

    def restore(self, sent: Iterable[Alert]) -> None:
        """Alerts sent earlier (alerts.jsonl): a follower started again does not repeat them."""
        for alert in sent:
            self._seen.add(alert.key)
            if alert.kind == AlertKind.END and alert.cell is not None:
                self._states[alert.cell] = alert.key.rsplit(":", 1)[-1]

    def news(self, cells: Iterable[CellFacts], now: float | None = None) -> list[Alert]:
        now = time.time() if now is None else now
        alerts: list[Alert] = []
        for cell in cells:
            before = self._states.get(cell.id)
            self._states[cell.id] = cell.state
            if cell.state != before and cell.state in self.alert_states:
                severity = {"finished": "info", "stopped": "warn", "stalled": "warn"}.get(cell.state, "error")
                alerts.append(
                    Alert(
                        AlertKind.END,
                        self.grid,
                        severity,
                        f"{cell.id}: {cell.status}",
                        f"{cell.id}: {cell.status}",
                        cell=cell.id,
                        key=f"end:{cell.id}:{cell.state}",
                        time=now,
                    )
                )
            for finding in cell.findings:
                key = _finding_key(cell.id, finding)
                if finding.severity == "info" or key in self._seen:
                    continue
                self._seen.add(key)
                at = f" @ step {finding.step}" if finding.step is not None else ""
                alerts.append(
                    Alert(
                        AlertKind.FINDING,
                        self.grid,
                        finding.severity,
                        f"{cell.id}: {finding.kind}{at}: {finding.message}",
                        f"{cell.id}: {(finding.kind or finding.message).replace('_', ' ')}",
                        cell=cell.id,
                        step=finding.step,
                        key=key,
                        time=now,
                    )
                )
        return alerts

    def verdict(self, headline: str, evidence: Sequence[str], now: float | None = None) -> Alert | None:
        """The verdict once, when the grid has ended (again only if a resumed grid ends with another one)."""
        key = f"verdict:{headline}"
        if key in self._seen:
            return None
        self._seen.add(key)
        lines = [f"{self.grid} ended. Verdict: {headline}", *(f"• {line}" for line in evidence)]
        now = time.time() if now is None else now
        return Alert(AlertKind.VERDICT, self.grid, "info", "\n".join(lines), headline, key=key, time=now)


def _finding_key(cell_id: str, finding: FindingFacts) -> str:
    return f"finding:{cell_id}:{finding.kind or finding.message}:{finding.severity}"


# ---- Where alerts go ---------------------------------------------------------------------------


def url_host(url: str) -> str:
    """What of a webhook URL may be shown: its host. The path holds the secret token."""
    try:
        return urlsplit(url).hostname or "the webhook"
    except ValueError:
        return "the webhook"


def message_of(alerts: Sequence[Alert]) -> str:
    """One message for a batch of alerts, cut to what Slack and Discord both take.

    A grid's verdict often arrives with the last cells' ends and findings in one batch. It is what the
    message is for (its last lines say which cells failed or were stopped), so when the batch is too
    long the other events give way, counted ("… and 3 more events"), and the verdict is kept whole;
    only a verdict longer than a message on its own is cut."""
    grid = alerts[0].grid
    verdicts = [a.text for a in alerts if a.kind == AlertKind.VERDICT]
    if len(alerts) == 1 and verdicts:
        return _cut(verdicts[0])
    events = [a.text for a in alerts if a.kind != AlertKind.VERDICT]
    head = f"[{grid}] "

    def joined(kept: int) -> str:
        left = len(events) - kept
        more = [f"… and {left} more event{'s' if left != 1 else ''}"] if left else []
        return head + "\n".join([*events[:kept], *more, *verdicts])

    kept, least = len(events), 0 if verdicts else 1  # without a verdict, a first event too long is cut
    while kept > least and len(joined(kept)) > MAX_MESSAGE:
        kept -= 1
    return _cut(joined(kept))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def webhook_body(text: str) -> bytes:
    """A body that Slack (``text``) and Discord (``content``) incoming webhooks both accept.

    Text from logs is data: Slack reads ``<!channel>`` and ``<url|label>`` in text, so its three control
    characters are escaped as Slack documents; Discord is told to ping nobody (``allowed_mentions``)."""
    slack = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return json.dumps({"text": slack, "content": text, "allowed_mentions": {"parse": []}}).encode()


class Attempt:
    """One try of a delivery, which the dispatcher may cut short from its own thread: a sink registers
    what it opens (its socket, its process) with ``on_abort``; ``abort`` shuts them, which ends a read
    or a wait that is blocked in the try's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._aborts: list[Callable[[], None]] = []
        self.aborted = False

    def on_abort(self, action: Callable[[], None]) -> None:
        with self._lock:
            if not self.aborted:
                self._aborts.append(action)
                return
        _quietly(action)  # cut short already: at once

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            actions, self._aborts = self._aborts, []
        for action in actions:
            _quietly(action)


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except OSError:  # a socket closed meanwhile, a process that has ended
        pass


class Sink:
    """A destination that may fail: ``deliver`` raises DeliveryError to be tried again later. A try
    that has not ended ``timeout`` seconds after it began is cut short by the dispatcher (``Attempt``)."""

    name = "sink"
    timeout = HTTP_TIMEOUT
    too_slow = "no answer"

    def deliver(self, text: str, alerts: Sequence[Alert], attempt: Attempt) -> None:
        raise NotImplementedError


class DeliveryError(RuntimeError):
    """A delivery that failed; ``retry`` False when trying again cannot help (an HTTP client error, a
    program that cannot be run); ``wait``: the seconds the server asked for (Retry-After)."""

    def __init__(self, message: str, retry: bool = True, wait: float | None = None) -> None:
        super().__init__(message)
        self.retry, self.wait = retry, wait


# HTTP statuses worth trying again: the server's errors, a timeout on its side, too many requests.
RETRY_STATUSES = frozenset({408, 425, 429})


class WebhookSink(Sink):
    too_slow = "no complete answer"

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT) -> None:
        self.url, self.timeout = url, timeout
        self.name = f"webhook {url_host(url)}"

    def deliver(self, text: str, alerts: Sequence[Alert], attempt: Attempt) -> None:
        request = urllib.request.Request(
            self.url, data=webhook_body(text), headers={"Content-Type": "application/json"}, method="POST"
        )
        opener = urllib.request.build_opener(_HttpHandler(attempt), _HttpsHandler(attempt))
        # Never str(exc): a URL error can carry the URL, and its secret. Every kind of error is a failed
        # try: an answer that is not HTTP (BadStatusLine) as much as a refused connection.
        try:
            with opener.open(request, timeout=self.timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code in RETRY_STATUSES
            wait = retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            raise DeliveryError(f"HTTP {exc.code}", retry=retry, wait=wait) from None
        except urllib.error.URLError as exc:
            raise DeliveryError(f"cannot connect ({type(exc.reason).__name__})") from None
        except http.client.HTTPException as exc:
            raise DeliveryError(f"not an HTTP answer ({type(exc).__name__})") from None
        except Exception as exc:
            raise DeliveryError(type(exc).__name__) from None


def retry_after(value: str | None) -> float | None:
    """A Retry-After of seconds (the dispatcher caps it); a date or anything else is ignored."""
    value = (value or "").strip()
    return float(value) if value.isdigit() else None


def _connection(base: type[http.client.HTTPConnection], attempt: Attempt) -> Any:
    """``base`` whose sockets, the plain one and the TLS one wrapped around it, the attempt can shut."""

    class Connection(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            create: Callable[..., socket.socket] = self._create_connection  # type: ignore[has-type]

            def created(*args: Any, **kwargs: Any) -> socket.socket:
                sock = create(*args, **kwargs)
                attempt.on_abort(functools.partial(sock.shutdown, socket.SHUT_RDWR))
                return sock

            self._create_connection = created
            super().connect()
            attempt.on_abort(functools.partial(self.sock.shutdown, socket.SHUT_RDWR))

    return Connection


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, attempt: Attempt) -> None:
        super().__init__()
        self.attempt = attempt

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_connection(http.client.HTTPConnection, self.attempt), req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, attempt: Attempt) -> None:
        super().__init__()
        self.attempt = attempt

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_connection(http.client.HTTPSConnection, self.attempt), req)  # the default TLS context


class CommandSink(Sink):
    """An argument list run with no shell: the message is its last argument, the alerts as JSON lines on stdin."""

    too_slow = "did not end"

    def __init__(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> None:
        self.argv, self.timeout = list(argv), timeout
        self.name = f"command {self.argv[0]}"

    def deliver(self, text: str, alerts: Sequence[Alert], attempt: Attempt) -> None:
        stdin = b"".join(msgspec.json.encode(a) + b"\n" for a in alerts)
        try:
            process = subprocess.Popen(
                [*self.argv, text], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as exc:  # no such program, not executable: trying again cannot help
            raise DeliveryError(type(exc).__name__, retry=False) from None
        attempt.on_abort(process.kill)
        try:
            process.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise DeliveryError(f"{self.too_slow} within {self.timeout:g} s") from None
        except OSError as exc:  # it closed its stdin early: its exit status says the rest
            process.wait()
            if process.returncode == 0:
                raise DeliveryError(type(exc).__name__) from None
        if process.returncode != 0:
            raise DeliveryError(f"exit status {process.returncode}")


class Dispatcher:
    """Writes every alert to alerts.jsonl now; delivers to the sinks from a background thread.

    Rate limit: a sink gets at most one message per ``min_interval`` seconds; alerts that come in
    between wait and go together in the next message. Each try is cut short after its sink's
    ``timeout`` (connecting, sending and reading together); a failed one is logged with the sink's
    host and tried again after ``backoff`` seconds, doubling up to ``max_backoff`` (a Retry-After too),
    ``retries`` tries in all. ``close`` sends what waits and returns within ``drain`` seconds (and
    ABORT_SECONDS to cut the last try short), whatever the network does, and says how many alerts
    each sink did not get.
    """

    def __init__(
        self,
        run_dir: Path,
        sinks: Sequence[Sink],
        log: Callable[[str], None],
        min_interval: float = 10.0,
        backoff: float = BACKOFF_SECONDS,
        retries: int = RETRIES,
        max_backoff: float | None = None,
    ) -> None:
        self.path = run_dir / ALERTS_FILE
        self.sinks, self.log = list(sinks), log
        self.min_interval, self.backoff, self.retries = min_interval, backoff, retries
        self.max_backoff = MAX_BACKOFF_SECONDS if max_backoff is None else max_backoff
        self._queue: queue.Queue[Alert | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._give_up = threading.Event()
        self._attempt: Attempt | None = None
        self.handed = 0  # alerts handed to the delivery thread
        self.reached = [0] * len(self.sinks)  # of those, the alerts each sink got
        self.delivered = 0  # messages
        self.failed = 0

    def send(self, alerts: Iterable[Alert]) -> None:
        alerts = list(alerts)
        if not alerts:
            return
        try:
            with safe.open_append(self.path) as f:  # never through a link planted in its place
                for alert in alerts:
                    f.write(msgspec.json.encode(alert) + b"\n")
        except OSError as exc:  # a read-only run directory: deliver all the same
            self.log(f"alerts: cannot record in {self.path} ({exc.strerror or exc})")
        if not self.sinks:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._deliver_loop, name="prefwatch-alerts", daemon=True)
            self._thread.start()
        self.handed += len(alerts)
        for alert in alerts:
            self._queue.put(alert)

    def close(self, drain: float = DRAIN_SECONDS) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(drain)
        cut = self._thread.is_alive()
        if cut:  # no more tries; the one under way is cut short
            self._give_up.set()
            attempt = self._attempt
            if attempt is not None:
                attempt.abort()
            self._thread.join(ABORT_SECONDS)
        for sink, reached in zip(self.sinks, self.reached, strict=True):
            if reached < self.handed:
                why = f" (still trying after {drain:g} s)" if cut else ""
                self.log(f"alerts: {self.handed - reached} of {self.handed} alert(s) not delivered to {sink.name}{why}")

    def _say(self, line: str) -> None:
        """Log from the delivery thread: a log that cannot be written (a full disk) must not end it."""
        try:
            self.log(line)
        except (OSError, ValueError):
            pass

    def _deliver_loop(self) -> None:
        last = -float("inf")
        closing = False
        while not closing and not self._give_up.is_set():
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            # Wait out the rate limit, gathering what comes meanwhile (a close sends at once).
            while True:
                wait = last + self.min_interval - time.monotonic()
                try:
                    more = self._queue.get(timeout=max(0.05, wait)) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    if wait <= 0:
                        break
                    continue
                if more is None:
                    closing = True
                    break
                batch.append(more)
            last = time.monotonic()
            text = message_of(batch)
            for index, sink in enumerate(self.sinks):
                if not self._give_up.is_set() and self._deliver(sink, text, batch):
                    self.reached[index] += len(batch)

    def _deliver(self, sink: Sink, text: str, batch: Sequence[Alert]) -> bool:
        """Up to ``retries`` tries; True once one succeeded."""
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                self._try(sink, text, batch)
            except DeliveryError as exc:
                error = exc
            else:
                self.delivered += 1
                if attempt > 1:
                    self._say(f"alerts: delivered to {sink.name} on try {attempt}")
                return True
            if self._give_up.is_set() or not error.retry or attempt == self.retries:
                self.failed += 1
                self._say(f"alerts: delivery to {sink.name} failed after {attempt} tries: {error}")
                return False
            wait = min(error.wait if error.wait is not None else delay, self.max_backoff)
            self._say(f"alerts: try {attempt} of {self.retries} to {sink.name} failed: {error}; again in {wait:g} s")
            if self._give_up.wait(wait):
                self.failed += 1
                self._say(f"alerts: delivery to {sink.name} abandoned at exit after {attempt} tries")
                return False
            delay = min(delay * 2, self.max_backoff)
        return False

    def _try(self, sink: Sink, text: str, batch: Sequence[Alert]) -> None:
        """One try in a thread of its own, cut short after ``sink.timeout`` seconds whatever it waits on
        (a server trickling its answer a byte at a time resets a socket's timeout forever)."""
        attempt = self._attempt = Attempt()
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                sink.deliver(text, batch, attempt)
            except BaseException as exc:  # whatever it is, it is this try's failure
                outcome.append(exc)

        worker = threading.Thread(target=run, name="prefwatch-alert-try", daemon=True)
        worker.start()
        worker.join(sink.timeout)
        if worker.is_alive():
            attempt.abort()
            worker.join(ABORT_SECONDS)
            raise DeliveryError(f"{sink.too_slow} within {sink.timeout:g} s")
        if not outcome:
            return
        if attempt.aborted:
            raise DeliveryError("cut short at exit", retry=False)
        error = outcome[0]
        if isinstance(error, DeliveryError):
            raise error
        raise DeliveryError(type(error).__name__)


def read_sent(run_dir: Path) -> list[Alert]:
    """The alerts recorded in alerts.jsonl (lines that do not parse are skipped: a torn last line)."""
    path = run_dir / ALERTS_FILE
    try:
        lines = safe.read_bytes(path).splitlines()
    except OSError:
        return []
    sent = []
    for line in lines:
        try:
            sent.append(msgspec.json.decode(line, type=Alert))
        except msgspec.ValidationError:
            continue
        except msgspec.DecodeError:
            continue
    return sent


def sinks_from(settings: AlertSettings) -> list[Sink]:
    """The sinks an [alerts] table asks for."""
    sinks: list[Sink] = []
    if settings.webhook:
        sinks.append(WebhookSink(settings.webhook))
    if settings.command:
        sinks.append(CommandSink(settings.command))
    return sinks
