"""Command line: parsing only. Each subcommand hands over to one function, importing what it needs
when it runs, so ``prefwatch --help`` never loads Textual, torch or transformers.

Exit statuses: 0 ok, 1 a job or the tool failed, 2 bad input, 3 a verdict that is not decisive.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prefwatch import __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_DECISIVE = 0, 1, 2, 3


REPORT_EXIT_STATUSES = f"""exit status:
  {EXIT_OK}    the verdict is decisive
  {EXIT_BAD_INPUT}    bad input: no logs at the path, a bad --label or option, an output or plot that
       cannot be written, a tracker's store or a cell of it that cannot be read (one line on
       stderr says which)
  {EXIT_NOT_DECISIVE}    the verdict is not decisive: the report says what would decide it
  130  interrupted (Ctrl-C)"""


class UsageError(Exception):
    """Bad input: the message is printed on one line and the exit status is 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefwatch",
        description="Launch, watch and decide a preference-tuning grid (DPO / SimPO / ORPO x LoRA rank).",
        epilog="Exit status: 0 ok, 1 a job or the tool failed, 2 bad input, 3 verdict not decisive.",
    )
    parser.add_argument("--version", action="version", version=f"prefwatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    launch = commands.add_parser("launch", help="validate a grid file, start every cell detached, open the monitor")
    launch.add_argument("grid", type=Path, help="the grid file (TOML), or with --resume the run directory")
    launch.add_argument("--out", type=Path, default=Path("runs"), help="folder for the run directory (default: runs)")
    mode = launch.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="start the cells and return at once")
    mode.add_argument("--headless", action="store_true", help="no monitor: print progress, wait for every cell")
    launch.add_argument(
        "--check", action="store_true", help="validate the grid file and print its cells; start nothing"
    )
    launch.add_argument(
        "--resume", action="store_true", help="restart the cells of a run directory that did not finish"
    )
    launch.add_argument("--poll", action="store_true", help="poll files instead of file events (NFS)")
    launch.add_argument(
        "--force", action="store_true", help="launch (or list) a grid of more cells than the cap (4096)"
    )

    label_help = "objective and LoRA rank of a cell whose folder name does not say (repeatable)"
    attach = commands.add_parser("attach", help="open the monitor on a grid whose jobs run (or ran)")
    replay = commands.add_parser("replay", help="play finished logs from disk (instantly, or as a time-lapse)")
    replay.add_argument(
        "--speed", type=float, metavar="X", help="play back at X times the logs' own pace (default: all at once)"
    )
    report = commands.add_parser(
        "report",
        help="findings and verdict without a screen",
        description="Findings per cell and the verdict, without a screen.",
        epilog=REPORT_EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status = commands.add_parser("status", help="what runs where")
    for sub in (attach, replay, report, status):
        sub.add_argument("path", type=Path, help="a run directory, a cell, a metrics.jsonl or TRL output dirs")
        sub.add_argument("--label", action="append", default=[], metavar="NAME=OBJECTIVE:RANK", help=label_help)
    for sub in (attach, replay):
        sub.add_argument("--poll", action="store_true", help="poll files instead of file events (NFS)")
    attach.add_argument(
        "--headless",
        action="store_true",
        help="no monitor: send the grid's [alerts] and apply its [policy] (Slurm grids), print each alert, "
        "return when every cell has ended; on logs prefwatch did not launch (a tracker's store), print what is "
        "news, runs that start meanwhile included, until every cell has ended and none started for a minute",
    )

    report.add_argument("--format", choices=("terminal", "md", "json", "html"), default="terminal")
    report.add_argument(
        "--at",
        choices=("final", "best"),
        default="final",
        help="compare each cell's final (default) or best held-out evaluation",
    )
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the md, json or html report to FILE (html: default report.html)",
    )
    report.add_argument(
        "--heldout-pairs", type=int, metavar="N", help="held-out size, for logs without per-pair results"
    )
    report.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also draw every cell's curves with findings marked"
    )

    stop = commands.add_parser("stop", help="stop a cell, or every cell of the grid")
    stop.add_argument("path", type=Path, help="the run directory")
    stop.add_argument("cells", nargs="*", metavar="CELL", help="cell ids (default: all)")
    stop.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default 10)")
    init = commands.add_parser("init", help="write a commented grid.toml that fits this machine")
    init.add_argument("--model", help='a Hugging Face id or local path (default: the embedded "tiny")')
    init.add_argument("--data", help='a JSONL file or data set id (default: the embedded "tiny-sales")')
    init.add_argument("--name", help="the grid's name (default: from the model)")
    init.add_argument("-o", "--output", type=Path, default=Path("grid.toml"), help="where to write (default grid.toml)")

    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = HANDLERS[args.command]
    try:
        return handler(args)
    except UsageError as exc:
        from prefwatch.core.textsafe import plain

        print(f"prefwatch: {plain(exc)}", file=sys.stderr)  # paths and cell names in it are data
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        from prefwatch.core.textsafe import plain
        from prefwatch.files.safe import PlantedFile

        if not isinstance(exc, PlantedFile):
            raise
        print(f"prefwatch: {plain(exc)}", file=sys.stderr)  # a link planted where prefwatch writes: one line
        return EXIT_BAD_INPUT


# ---- launch ----------------------------------------------------------------------------------


def cmd_launch(args: argparse.Namespace) -> int:
    from prefwatch.files.grid import GridError, load_grid
    from prefwatch.run import jobs

    if args.resume:
        return _resume(args)
    try:
        grid = load_grid(args.grid, force=args.force)
    except GridError as exc:
        raise UsageError(str(exc)) from None
    if args.check:
        print(f"{grid.path}: ok, {len(grid.cells)} cells: {', '.join(c.id for c in grid.cells)}")
        return EXIT_OK
    _require_training_packages()
    try:
        run_dir = jobs.create_run_dir(grid, args.out)
        where = jobs.start_cells(run_dir)
    except jobs.LaunchError as exc:
        raise UsageError(str(exc)) from None
    print(f"prefwatch: started {len(grid.cells)} cells in {run_dir}" + (f" ({where})" if where else ""))
    if args.detach:
        print(f"  follow them with: prefwatch attach {run_dir}")
        return EXIT_OK
    if args.headless:
        return follow_headless(run_dir)
    return _monitor(run_dir, "live", args.poll)


def _resume(args: argparse.Namespace) -> int:
    from prefwatch.run import jobs

    _require_training_packages()
    from prefwatch.core.textsafe import plain

    run_dir = args.grid
    try:
        resumed = jobs.requeue_unfinished(run_dir)
    except jobs.LaunchError as exc:
        raise UsageError(str(exc)) from None
    if not resumed.requeued and not resumed.running:
        print(plain(f"prefwatch: every cell in {run_dir} finished; nothing to resume"))
        return EXIT_OK
    try:
        # Local: a new supervisor, which follows the jobs still running; Slurm keeps running its own.
        where = (
            jobs.start_cells(run_dir, resume=True)
            if resumed.requeued or jobs.backend_of(run_dir) != jobs.SLURM
            else None
        )
    except jobs.LaunchError as exc:
        raise UsageError(str(exc)) from None
    parts = [f"resuming {', '.join(resumed.requeued)}"] if resumed.requeued else []
    parts += [f"following {', '.join(resumed.running)} (still running)"] if resumed.running else []
    print(plain(f"prefwatch: {'; '.join(parts)} in {run_dir}" + (f" ({where})" if where else "")))
    if args.detach:
        return EXIT_OK
    if args.headless:
        return follow_headless(run_dir)
    return _monitor(run_dir, "live", args.poll)


def _require_training_packages() -> None:
    from importlib.util import find_spec

    missing = [name for name in ("torch", "transformers", "trl", "peft") if find_spec(name) is None]
    if missing:
        raise UsageError(f"launching trains models and needs {', '.join(missing)}: pip install 'prefwatch[train]'")


def follow_headless(run_dir: Path) -> int:
    """Rich progress per cell until every cell has ended; 0 only when all finished."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from prefwatch.core.textsafe import plain
    from prefwatch.ingest.discover import open_path
    from prefwatch.run import jobs

    grid = open_path(run_dir)
    console = Console(stderr=False)
    columns = (
        TextColumn("{task.description}", markup=False),  # cell ids and states are data, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}", markup=False),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        tasks = {
            cell.id: progress.add_task(plain(cell.id), total=cell.max_steps, state=jobs.QUEUED) for cell in grid.cells
        }
        while True:
            grid.poll()
            jobs.hand_statuses(grid)
            states = {}
            for cell in grid.cells:
                status = cell.status()
                states[cell.id] = status.state
                progress.update(tasks[cell.id], completed=cell.series.last_step, state=jobs.describe(status))
            if all(state in jobs.ENDED_STATES for state in states.values()):
                break
            time.sleep(0.5)
    finished = sum(state == jobs.FINISHED for state in states.values())
    console.print(Text(f"{finished} of {len(states)} cells finished in {plain(run_dir)}"))
    _print_report(run_dir, console)
    return EXIT_OK if finished == len(states) else EXIT_FAILED


def _print_report(path: Path, console: Any) -> None:
    from prefwatch.analysis.analyse import analyse
    from prefwatch.ingest.discover import open_path
    from prefwatch.report.text import render_terminal
    from prefwatch.run import jobs

    grid = open_path(path)
    grid.poll()
    jobs.hand_statuses(grid)
    render_terminal(analyse(grid), console)


# ---- monitor ---------------------------------------------------------------------------------


def cmd_attach(args: argparse.Namespace) -> int:
    if args.headless:
        return _attach_headless(args.path)
    return _monitor(args.path, "live", args.poll, labels=_labels(args))


def _attach_headless(run_dir: Path) -> int:
    from prefwatch.act.policy import follow_headless, follow_logs
    from prefwatch.core.textsafe import plain
    from prefwatch.files import rundir
    from prefwatch.ingest.sources import SourceError

    def say(message: str) -> None:
        for line in message.splitlines():  # the verdict's evidence comes one line each
            print(f"{time.strftime('%H:%M:%S')} {plain(line)}", flush=True)

    try:
        if rundir.is_grid_dir(run_dir):
            follow_headless(run_dir, say)
        else:  # logs prefwatch did not launch (a tracker's store): say what is news, send nothing
            follow_logs(run_dir, say)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a run directory this user cannot write (alerts.lock, alerts.jsonl)
        raise UsageError(f"{run_dir}: cannot follow ({exc.strerror or exc})") from None
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    if args.speed is not None and args.speed <= 0:
        raise UsageError(f"--speed: must be > 0, got {args.speed}")
    speed = args.speed
    if speed is not None and not _open(args).timed:
        print(
            f"prefwatch replay: --speed: {args.path} has no timestamps (TRL's trainer_state.json and "
            "LLaMA-Factory's logs keep none): showing everything at once",
            file=sys.stderr,
        )
        speed = None
    return _monitor(args.path, "replay", args.poll, labels=_labels(args), speed=speed)


def _monitor(path: Path, mode: str, poll: bool, **options: Any) -> int:
    from prefwatch.ingest.sources import SourceError

    try:
        from prefwatch.tui.app import run_monitor

        return run_monitor(path, mode=mode, poll=poll, **options)
    except SourceError as exc:
        raise UsageError(str(exc)) from None


def _labels(args: argparse.Namespace) -> dict[str, tuple[str | None, int | None]]:
    from prefwatch.ingest.discover import parse_label
    from prefwatch.ingest.sources import SourceError

    try:
        return dict(parse_label(text) for text in args.label)
    except SourceError as exc:
        raise UsageError(f"--label: {exc}") from None


def _open(args: argparse.Namespace) -> Any:
    """The logs at args.path, with --label applied and each launched cell's status handed in by the jobs
    layer; bad input is a one-line UsageError."""
    from prefwatch.ingest.discover import open_path
    from prefwatch.ingest.sources import SourceError

    try:
        grid = open_path(args.path, labels=_labels(args) or None)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    grid.poll()
    if grid.managed:  # the jobs layer (processes, Slurm) only for a grid prefwatch launched
        from prefwatch.run import jobs

        jobs.hand_statuses(grid)
    return grid


# ---- report, status, stop --------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from prefwatch.analysis.analyse import collector_paused

    with collector_paused():  # one pass over every log, then its rendering: few cycles, all short-lived
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    from prefwatch.analysis.analyse import analyse
    from prefwatch.analysis.peak import At
    from prefwatch.report.text import render_json, render_markdown, render_terminal

    analysis = analyse(_open(args), heldout_pairs=args.heldout_pairs, at=At(args.at))
    if args.format == "terminal":
        from rich.console import Console  # only here: 30 ms of a cached report's 300

        render_terminal(analysis, Console())
    else:
        if args.format == "html":
            from prefwatch.report.html import render_html

            text = render_html(analysis)
        else:
            text = render_json(analysis, str(args.path)) + "\n" if args.format == "json" else render_markdown(analysis)
        output = args.output or (Path("report.html") if args.format == "html" else None)
        if output is None:
            print(text, end="")
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"{output}: cannot write ({exc.strerror or exc})") from None
            print(f"prefwatch: wrote {output}")
    if args.plot:
        from prefwatch.report.plot import PlotUnavailable, save_plot

        try:
            save_plot(analysis, args.plot)
        except PlotUnavailable as exc:
            raise UsageError(str(exc)) from None
    from prefwatch.core.textsafe import plain

    unreadable = [c for c in analysis.cells if c.status.state == "unreadable"]
    for cell in unreadable:  # a store that cannot be read is bad input, named in one line each
        print(f"prefwatch report: {plain(cell.source.id)} unreadable: {plain(cell.status.error)}", file=sys.stderr)
    if unreadable:
        return EXIT_BAD_INPUT
    return EXIT_OK if analysis.verdict.decisive else EXIT_NOT_DECISIVE


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from prefwatch.core.textsafe import plain
    from prefwatch.files.system import gpu_warnings, machine_lines, system_line
    from prefwatch.run import jobs

    grid = _open(args)
    supervised = grid.supervised
    statuses = [cell.status() for cell in grid.cells]
    all_ended = all(s.state in jobs.ENDED_STATES - {jobs.LOST} for s in statuses)
    where = "Slurm" if grid.managed and jobs.backend_of(grid.root) == jobs.SLURM else None
    where = where or f"supervisor: {_supervisor_word(supervised, all_ended)}"
    table = Table(title=Text(f"{plain(grid.name)}  ({where})"))
    for column in ("cell", "state", "step", "device", "pid/job", "last log", "system"):
        table.add_column(column)
    now = time.time()
    for cell, status in zip(grid.cells, statuses):
        step = f"{cell.series.last_step}" + (f"/{cell.max_steps}" if cell.max_steps else "")
        age = ago(now - last) if (last := cell.last_log_time()) is not None else "–"
        running = status.state == jobs.RUNNING
        notes = [w.message for w in gpu_warnings(cell.system, running)]
        system = "; ".join([*filter(None, [system_line(cell.system.last) if running else None]), *notes]) or "–"
        table.add_row(
            *(
                Text(plain(v))
                for v in (
                    cell.id,
                    jobs.describe(status),
                    step,
                    status.record.device or "–",
                    str(status.record.job_id or status.record.pid or "–"),
                    age,
                    system,
                )
            )
        )
    console = Console()
    console.print(table)
    running = [c.system.last for c, st in zip(grid.cells, statuses) if st.state == jobs.RUNNING and c.system.last]
    for line in machine_lines(running):  # one line per machine its running cells are on
        console.print(Text(plain(line)))
    return EXIT_OK


def ago(seconds: float) -> str:
    """An age a person reads at a glance: "12 s ago", "3 min ago", "5 h ago", "235 days ago".

    >>> ago(185.0)
    '3 min ago'
    """
    seconds = max(0.0, seconds)
    for size, unit in ((86400.0, "days"), (3600.0, "h"), (60.0, "min")):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _supervisor_word(alive: bool | None, all_ended: bool) -> str:
    if alive is False:
        return "exited" if all_ended else "gone"
    return "running" if alive else "none"


def cmd_stop(args: argparse.Namespace) -> int:
    from prefwatch.files import rundir
    from prefwatch.run import jobs

    if not rundir.is_grid_dir(args.path):
        raise UsageError(f"{args.path}: not a prefwatch run directory (no cells/ folder)")
    from prefwatch.core.textsafe import plain

    try:
        outcome = jobs.request_stop(args.path, args.cells or None, grace=args.grace)
    except jobs.LaunchError as exc:
        raise UsageError(str(exc)) from None
    for line in outcome.refused:  # a status.json that names a process prefwatch cannot prove is the cell's job
        print(plain(f"prefwatch: {line}"), file=sys.stderr)
    if outcome.stopped:
        print(plain(f"prefwatch: stopped {', '.join(outcome.stopped)}"))
    elif not outcome.refused:
        print("prefwatch: nothing was running or queued")
    return EXIT_FAILED if outcome.refused else EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from prefwatch.files.grid import GridError, load_grid
    from prefwatch.run.init import write_grid

    try:
        write_grid(args.output, args.model, args.data, args.name)
    except FileExistsError:
        raise UsageError(f"{args.output}: exists already; choose another file with -o") from None
    try:
        grid = load_grid(args.output)
    except GridError as exc:
        raise UsageError(f"the written grid does not validate: {exc}") from None
    print(f"prefwatch: wrote {args.output} ({len(grid.cells)} cells); launch it with: prefwatch launch {args.output}")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from prefwatch import completion

    print(getattr(completion, args.shell)(build_parser()), end="")
    return EXIT_OK


HANDLERS = {
    "init": cmd_init,
    "completion": cmd_completion,
    "launch": cmd_launch,
    "attach": cmd_attach,
    "replay": cmd_replay,
    "report": cmd_report,
    "status": cmd_status,
    "stop": cmd_stop,
}
