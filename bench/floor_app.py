"""The floor the monitor is measured against: a bare Textual app that follows the same files.

    python bench/floor_app.py FOLDER [--headless]

It finds every metrics.jsonl under FOLDER (a prefwatch run directory or a plain folder of runs),
watches their folders with watchdog, reads what each file gained when a change event comes, and
shows each cell's last line in one Static. No parsing, no analysis, no charts: whatever the
monitor costs above this is the price of what it adds. ``--headless`` renders frames to ANSI and
throws them away (bench/harness.py's NullTerminal), for the measurement without a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from textual.app import App, ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class Tail:
    """One file read by offset; keeps only its last complete line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.last = b""

    def read(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return False
        end = data.rfind(b"\n")
        if end < 0:
            return False
        self.offset += end + 1
        start = data.rfind(b"\n", 0, end) + 1
        self.last = data[start:end]
        return True


class FloorApp(App[None]):
    """One line per cell: its id and its log's last line, updated on every change event."""

    CSS = "Static { height: 1; }"

    def __init__(self, files: list[Path]) -> None:
        super().__init__()
        self.tails = {f: Tail(f) for f in files}
        self.labels: dict[Path, Static] = {}
        self._lock = threading.Lock()
        self.observer = Observer()

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            for path in self.tails:
                label = Static(path.parent.name, markup=False)
                self.labels[path] = label
                yield label

    def on_mount(self) -> None:
        app = self

        class Handler(FileSystemEventHandler):
            def on_modified(self, event: FileSystemEvent) -> None:
                app.changed(Path(str(event.src_path)))

        handler = Handler()
        for folder in {p.parent for p in self.tails}:
            self.observer.schedule(handler, str(folder), recursive=False)
        self.observer.start()
        for path in self.tails:
            self.changed(path, from_thread=False)

    def changed(self, path: Path, from_thread: bool = True) -> None:
        tail = self.tails.get(path)
        if tail is None:
            return
        with self._lock:
            if not tail.read():
                return
            text = f"{path.parent.name}  {tail.last.decode(errors='replace')}"
        if from_thread:
            self.call_from_thread(self.labels[path].update, text)
        else:
            self.labels[path].update(text)

    def on_unmount(self) -> None:
        self.observer.stop()


def metrics_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("metrics.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--headless", action="store_true")
    args = parser.parse_args()
    app = FloorApp(metrics_files(args.folder))
    if args.headless:
        sys.path.insert(0, os.path.dirname(__file__))
        from harness import NullTerminal

        app.driver_class = NullTerminal
        app.run(size=(160, 48))  # the size bench/headless.py gives the monitor
        return
    app.run()


if __name__ == "__main__":
    main()
