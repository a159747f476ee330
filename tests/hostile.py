"""A corpus of hostile inputs (issue 11), built on demand into a temporary folder.

Each case is a function that writes one grid folder holding good cells beside one damaged cell and
returns the path a user would give ``prefwatch report``/``status``; ``GOOD_CELL`` must then still be
read. The hostile bytes are the ones the issue lists; the memory cases are sized so the figures in
the closing note can be measured (``python tests/hostile.py`` prints them).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from test_ingest_tensorboard import event, field, file_version_event, record, simple_value, tensor_value, varint

SAMPLE = Path(__file__).resolve().parent.parent / "sample_runs" / "tiny-demo"
GOOD_CELL = "dpo-r8"
BAD_CELL = "dpo-r16"
DEEP = 1100

Builder = Callable[[Path], Path]


def sample_grid(tmp: Path) -> Path:
    """A copy of the sample run directory (four finished cells, no supervisor)."""
    grid = tmp / "grid"
    shutil.copytree(SAMPLE, grid)
    (grid / "launch.lock").unlink(missing_ok=True)
    return grid


def _append(path: Path, text: bytes) -> None:
    with open(path, "ab") as f:
        f.write(text)


def _metrics_line(line: bytes) -> Builder:
    def build(tmp: Path) -> Path:
        grid = sample_grid(tmp)
        _append(grid / "cells" / BAD_CELL / "metrics.jsonl", line + b"\n")
        return grid

    return build


def _cell_file(name: str, text: bytes) -> Builder:
    def build(tmp: Path) -> Path:
        grid = sample_grid(tmp)
        (grid / "cells" / BAD_CELL / name).write_bytes(text)
        return grid

    return build


def _cell_json(**changes: object) -> Builder:
    def build(tmp: Path) -> Path:
        grid = sample_grid(tmp)
        path = grid / "cells" / BAD_CELL / "cell.json"
        cell = json.loads(path.read_text())
        cell.update(changes)
        path.write_text(json.dumps(cell))
        return grid

    return build


def logs_folder(tmp: Path, bad: str) -> tuple[Path, Path]:
    """A folder of cells prefwatch did not start: the good cell's metrics.jsonl, and an empty ``bad`` folder."""
    root = tmp / "logs"
    good = root / GOOD_CELL
    good.mkdir(parents=True)
    shutil.copy(SAMPLE / "cells" / GOOD_CELL / "metrics.jsonl", good / "metrics.jsonl")
    (root / bad).mkdir()
    return root, root / bad


def _trainer_state(text: bytes) -> Builder:
    def build(tmp: Path) -> Path:
        root, bad = logs_folder(tmp, "simpo-r16-out")
        (bad / "trainer_state.json").write_bytes(text)
        return root

    return build


def _events(data: bytes) -> Builder:
    def build(tmp: Path) -> Path:
        root, bad = logs_folder(tmp, "simpo-r16-out")
        (bad / "events.out.tfevents.1700000000.host").write_bytes(data)
        return root

    return build


def tb_file(events: list[bytes]) -> bytes:
    good = [event(step, [simple_value("train/loss", 1.0 / step)]) for step in range(1, 6)]
    return b"".join(record(r) for r in [file_version_event(), *good, *events])


def odd_float_val() -> bytes:
    """A tensor whose packed float_val is 5 bytes long (not a multiple of 4)."""
    tensor = b"\x08\x01" + field(2, b"") + field(5, b"\x00\x00\x80\x3f\x00")
    value = field(1, b"train/loss") + field(8, tensor)
    return b"\x09" + struct.pack("<d", 1.7e9) + b"\x10" + varint(7) + field(5, field(1, value))


def ten_byte_step() -> bytes:
    """An Event whose step varint takes 10 bytes (2^63 and above: the sign bit and more)."""
    step = b"\xff" * 9 + b"\x7f"
    return b"\x09" + struct.pack("<d", 1.7e9) + b"\x10" + step + field(5, field(1, simple_value("train/loss", 0.5)))


def ten_byte_step_tensor() -> bytes:
    """The same step in TensorFlow 2's tensor layout, which the exact parser reads."""
    step = b"\xff" * 9 + b"\x7f"
    return b"\x09" + struct.pack("<d", 1.7e9) + b"\x10" + step + field(5, field(1, tensor_value("train/loss", 0.5)))


def huge_length_record() -> bytes:
    """A TFRecord header whose length is above 2^28, followed by good records."""
    header = struct.pack("<Q", (1 << 28) + 5)
    after = b"".join(record(event(step, [simple_value("train/loss", 0.1)])) for step in range(6, 9))
    return header + b"\0\0\0\0" + b"x" * 64 + after


def nested(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


# --- memory cases: hostile input of about `size` bytes ---


def tb_new_tag_per_step(size: int = 400_000) -> bytes:
    records, total, step = [file_version_event()], 0, 1
    while total < size:
        data = event(step, [simple_value(f"train/tag{step}", 1.0)])
        records.append(data)
        total += len(data) + 16
        step += 1
    return b"".join(record(r) for r in records)


def metrics_new_key_per_line(size: int = 230_000) -> bytes:
    lines, total, step = [], 0, 1
    while total < size:
        line = json.dumps({"step": step, f"k{step}": 1.0}).encode() + b"\n"
        lines.append(line)
        total += len(line)
        step += 1
    return b"".join(lines)


def tabs(size: int = 16 << 20) -> bytes:
    return b"\x09" * size


CASES: dict[str, Builder] = {
    "step NaN": _metrics_line(b'{"step": NaN, "loss": 1.0}'),
    "step Infinity": _metrics_line(b'{"step": Infinity, "loss": 1.0}'),
    "step -Infinity": _metrics_line(b'{"step": -Infinity, "loss": 1.0}'),
    "step 1e400": _metrics_line(b'{"step": 1e400, "loss": 1.0}'),
    "value 1e400": _metrics_line(b'{"step": 101, "loss": 1e400}'),
    "step 2^70": _metrics_line(b'{"step": 1180591620717411303424, "loss": 1.0}'),
    "nested line": _metrics_line(nested()),
    "nested value": _metrics_line(b'{"step": 101, "loss": ' + nested() + b"}"),
    'key with "': _metrics_line(b'{"step": 101, "a\\"b": 1.0}'),
    "key with \\": _metrics_line(b'{"step": 101, "a\\\\b": 1.0}'),
    "key with escaped control": _metrics_line(b'{"step": 101, "a\\u001b[31mb": 1.0}'),
    "key with raw control": _metrics_line(b'{"step": 101, "a\x1b[31mb": 1.0}'),
    "eval_pairs step Infinity": lambda tmp: _eval_pairs_step(tmp, b"Infinity"),
    "eval_pairs step NaN": lambda tmp: _eval_pairs_step(tmp, b"NaN"),
    "data.json NaN": _cell_file("data.json", b'{"heldout_pairs": NaN, "heldout": {"chosen_shorter_share": NaN}}'),
    "data.json nested": _cell_file("data.json", b'{"heldout": ' + nested() + b"}"),
    "seed NaN": _cell_file("cell.json", b'{"id": "dpo-r16", "objective": "dpo", "rank": 16, "seed": NaN}'),
    "seed Infinity": _cell_json(seed=float("inf")),
    "objective a number": _cell_json(objective=5),
    "objective a list": _cell_json(objective=["dpo"]),
    "objective with escapes": _cell_json(objective="dpo\x1b[2J\x1b]0;pwned\x07[bold]"),
    "rank a string": _cell_json(rank="16"),
    "trainer_state nested": _trainer_state(b'{"log_history": ' + nested() + b"}"),
    "trainer_state nested whole": _trainer_state(nested()),
    "trainer_state NaN step": _trainer_state(b'{"log_history": [{"step": NaN, "loss": 1}], "max_steps": NaN}'),
    "tensorboard odd float_val": _events(tb_file([odd_float_val()])),
    "tensorboard 10-byte step": _events(tb_file([ten_byte_step()])),
    "tensorboard 10-byte step (tensor)": _events(tb_file([ten_byte_step_tensor()])),
    "tensorboard length over 2^28": _events(tb_file([]) + huge_length_record()),
}


def _eval_pairs_step(tmp: Path, step: bytes) -> Path:
    grid = sample_grid(tmp)
    line = b'{"step": ' + step + b', "pair_ids": ["a"], "chosen": [1.0], "rejected": [0.5]}\n'
    _append(grid / "cells" / BAD_CELL / "eval_pairs.jsonl", line)
    return grid


MEMORY_CASES: dict[str, tuple[str, Callable[[], bytes]]] = {
    # name: (file the bytes go into, the bytes)
    "tensorboard new tag per step (400 KB)": ("events.out.tfevents.1700000000.host", tb_new_tag_per_step),
    "metrics.jsonl new key per line (230 KB)": ("metrics.jsonl", metrics_new_key_per_line),
    "events file of 0x09 bytes (16 MiB)": ("events.out.tfevents.1700000000.host", tabs),
    "metrics.jsonl of 0x09 bytes (16 MiB)": ("metrics.jsonl", tabs),
    "trainer_state.json of 0x09 bytes (16 MiB)": ("trainer_state.json", tabs),
}


def memory_case(tmp: Path, name: str) -> tuple[Path, int]:
    """A folder holding the good cell and one memory case; the path and the hostile file's size."""
    file_name, make = MEMORY_CASES[name]
    root, bad = logs_folder(tmp, "simpo-r16-out")
    data = make()
    (bad / file_name).write_bytes(data)
    return root, len(data)


# Runs the command as a child of a small Python process and writes the child's peak RSS (KiB) to a file.
# Measured from pytest directly, the figure would include pytest's own size: a forked child's peak
# resident memory counts the parent's pages it shared before exec.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli(*args: str, timeout: float = 120) -> tuple[int, str, str, int]:
    """``prefwatch ARGS`` in a subprocess: exit status, stdout, stderr and its peak resident memory in bytes."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "maxrss"
        env = {**os.environ, "COLUMNS": "120", "PYTHONUTF8": "1"}
        command = [sys.executable, "-c", _MEASURE, str(peak), "-m", "prefwatch", *args]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this call started: the wrapper and its child
            proc.communicate()
            raise
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), int(peak.read_text()) * 1024


def main() -> None:
    """Print every case's exit statuses, and the memory cases' peak resident memory (a Markdown table)."""
    import sys
    import tempfile

    only = sys.argv[1:]
    for name, build in CASES.items():
        if only and not any(o in name for o in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = str(build(Path(tmp)))
            results = []
            for args in (["report", "--format", "json"], ["report"], ["report", "--format", "md"], ["status"]):
                rc, out, err, _ = run_cli(*args, path)
                trace = "Traceback" in err
                if args[-1] == "json" and rc in (0, 3):
                    try:
                        json.loads(out, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
                    except ValueError as exc:
                        trace = f"bad JSON {exc}"  # type: ignore[assignment]
                results.append(f"{args[-1]}={rc}{'!' + str(trace) if trace else ''}")
                if trace:
                    print("   ", err.strip().splitlines()[-1][:200] if err.strip() else out[-200:])
            print(f"{name:32} {' '.join(results)}")
    print("\n| case | input | peak RSS (median of 3) | over the baseline | MB per MB of input |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root, _ = logs_folder(Path(tmp), "empty")
        base = sorted(run_cli("report", "--format", "json", str(root))[3] for _ in range(3))[1]
    print(f"| (baseline: the good cell alone) | – | {base / 1e6:.0f} MB | – | – |")
    for name in MEMORY_CASES:
        if only and not any(o in name for o in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root, size = memory_case(Path(tmp), name)
            runs = [run_cli("report", "--format", "json", str(root), timeout=600) for _ in range(3)]
            peak = sorted(r[3] for r in runs)[1]
            bad = [r for r in runs if r[0] not in (0, 2, 3) or "Traceback" in r[2]]
            note = f" rc={bad[0][0]} {bad[0][2].strip()[-200:]}" if bad else ""
            grown = max(0, peak - base)
            print(
                f"| {name} | {size / 1e6:.2f} MB | {peak / 1e6:.0f} MB | {grown / 1e6:.0f} MB | {grown / size:.0f} |{note}"
            )


if __name__ == "__main__":
    main()
