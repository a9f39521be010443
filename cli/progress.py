"""`tierline up`'s progress display: the start-up steps with their elapsed times, drawn
live on a terminal (a line per finished step elsewhere), and the redirect that keeps Ray's
and vLLM's output off the console."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from tierline.cli.quiet import LOG_LEVEL_ENV, TAIL_LINES, error_line, relevant_tail
from tierline.cli.startup import FAILED, DeployFailed, DeploymentState, DeployTimeout

PENDING, RUNNING, DONE, FAILED_STEP, STOPPED = "pending", "running", "done", "failed", "stopped"


@dataclass
class Step:
    key: str
    label: str
    state: str = PENDING
    detail: str = ""
    started: float | None = None
    ended: float | None = None

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None else now) - self.started


class StepBoard:
    """The steps and their states; `on_change(step)` hears of each start, end and failure."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.steps: list[Step] = []
        self.on_change: Callable[[Step], None] | None = None

    def step(self, key: str) -> Step | None:
        return next((s for s in self.steps if s.key == key), None)

    def add(self, key: str, label: str, before: str | None = None) -> Step:
        """A pending step (at the end, or before the step `before`); an existing one as is."""
        found = self.step(key)
        if found is not None:
            return found
        new = Step(key, label)
        at = next((i for i, s in enumerate(self.steps) if s.key == before), len(self.steps))
        self.steps.insert(at, new)
        return new

    def _set(self, key: str, state: str, detail: str | None) -> None:
        s = self.step(key)
        if s is None:
            s = self.add(key, key)
        if detail is not None:
            s.detail = detail
        if state == s.state:
            return
        now = self.clock()
        if s.started is None:
            s.started = now
        s.ended = None if state == RUNNING else now
        s.state = state
        if self.on_change is not None:
            self.on_change(s)

    def start(self, key: str, detail: str | None = None) -> None:
        self._set(key, RUNNING, detail)

    def update(self, key: str, detail: str) -> None:
        s = self.step(key)
        if s is not None and s.state in (PENDING, RUNNING):
            s.detail = detail

    def done(self, key: str, detail: str | None = None) -> None:
        self._set(key, DONE, detail)

    def fail(self, key: str, detail: str | None = None) -> None:
        self._set(key, FAILED_STEP, detail)

    def stop_running(self, detail: str | None = None) -> None:
        """The steps still running stop (another step failed, or an interrupt)."""
        for s in self.steps:
            if s.state == RUNNING:
                self._set(s.key, STOPPED, detail)


def apply_deployments(board: StepBoard, states: Sequence[DeploymentState]) -> None:
    """Each deployment's state onto its step (key: the deployment's name). A deployment
    the board does not list yet (the quota service, RAG) gets a step before the gateway."""
    for d in states:
        board.add(d.name, d.name, before="gateway")
        why = error_line(d.message.splitlines())
        if d.status == "HEALTHY":
            board.done(d.name, d.summary())
        elif d.status == FAILED:
            board.fail(d.name, why or d.status)
        elif d.status == "UNHEALTHY":  # Serve may still replace the replica
            board.start(d.name, f"unhealthy: {why}" if why else "unhealthy")
        else:
            board.start(d.name, d.summary() or d.status.lower())


_ICONS = {
    DONE: Text("✓", "green"),
    FAILED_STEP: Text("✗", "red"),
    STOPPED: Text("-", "yellow"),
    PENDING: Text("·", "dim"),
}


def step_line(s: Step, now: float) -> Text:
    """A finished step as one line: '✓ engine small   41s  1/1 replicas running'."""
    took = s.elapsed(now)
    line = Text.assemble(_ICONS.get(s.state, Text("…")), " ", (f"{s.label:<18}", "bold"))
    line.append(f"{took:5.0f}s" if took is not None else "      ")
    if s.detail:
        line.append(f"  {s.detail}", "red" if s.state == FAILED_STEP else "dim")
    return line


class BoardView:
    """The board as a table that Live redraws (the elapsed times tick)."""

    def __init__(self, board: StepBoard) -> None:
        self.board = board

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        now = self.board.clock()
        label_w = max((len(s.label) for s in self.board.steps), default=0)
        detail_w = max(10, options.max_width - label_w - 10)  # icon, time, gaps
        table = Table.grid(padding=(0, 1))
        table.add_column(width=1, no_wrap=True)
        table.add_column(width=label_w, no_wrap=True)
        table.add_column(justify="right", width=5, no_wrap=True)
        table.add_column(max_width=detail_w, no_wrap=True, overflow="ellipsis")
        for s in self.board.steps:
            icon: RenderableType = _ICONS.get(s.state, Text("·"))
            if s.state == RUNNING:
                icon = Spinner("dots", style="cyan")
            took = s.elapsed(now)
            detail = s.detail.splitlines()[0] if s.detail else ""
            table.add_row(
                icon,
                Text(s.label, "bold" if s.state == RUNNING else ""),
                Text(f"{took:.0f}s" if took is not None else "", "dim"),
                Text(detail, "red" if s.state == FAILED_STEP else "dim"),
            )
        yield table


RAY_LOGS_FALLBACK = "/tmp/ray/session_latest/logs"


def _hint(err: BaseException) -> str:
    if isinstance(err, DeployFailed):
        return "a replica failed to start; its error is above (model path, engine_kwargs, memory)"
    if isinstance(err, TimeoutError):
        return "not ready in time: on a slow or busy machine raise --ready-timeout-s"
    if "ray" in type(err).__module__ or "startup" in str(err):
        return "Ray did not start: a busy machine, or a cluster left running (`ray stop`)"
    return ""


def failure_report(
    err: BaseException, log_tail: Sequence[str], log_path: Path | None, ray_logs: str
) -> list[str]:
    """What the console shows when the start fails: the error, the lines that explain it
    (the deployments Serve did not get running, with its messages on them, else the
    error lines of our log: `log_tail`), a hint, and where the logs are."""
    text = str(err).strip() or type(err).__name__
    out = [f"error: {text.splitlines()[0]}"]
    states = err.deployments if isinstance(err, DeployFailed | DeployTimeout) else []
    explained = False
    for d in states:
        if d.status == "HEALTHY":
            continue
        message = d.message.strip()
        summary = f", {d.summary()}" if d.summary() else ""
        out.append(f"{d.name}: {d.status}{summary}" + ("; Serve says:" if message else ""))
        out += [f"  {line}" for line in relevant_tail(message.splitlines(), TAIL_LINES)]
        explained = explained or bool(message)
    if not explained and log_tail:
        out.append(f"last lines of {log_path}:")
        out += [f"  {line}" for line in log_tail]
    hint = _hint(err)
    if hint:
        out.append(f"hint: {hint}")
    ray_dir = ray_logs or RAY_LOGS_FALLBACK
    logs = ([str(log_path)] if log_path is not None else []) + [
        f"{ray_dir}/ (Ray's; serve/ has each replica's log)"
    ]
    out.append(f"logs: {'; '.join(logs)}")
    if isinstance(err, DeployFailed):
        out += [f"  {d.name}: {ray_dir}/serve/replica_{err.app}_{d.name}_*.log" for d in err.failed]
    if log_path is not None:
        out.append(f"`tierline up -v` (or {LOG_LEVEL_ENV}=debug) shows them on the console")
    return out


@contextlib.contextmanager
def shown(board: StepBoard, console: Console, title: str, live: bool) -> Iterator[None]:
    """Show the board while the block runs: redrawn live, or a line per finished step."""
    console.print(title, highlight=False, markup=False, soft_wrap=True)
    if not live:

        def printed(s: Step) -> None:
            if s.state in (DONE, FAILED_STEP, STOPPED):
                console.print(step_line(s, board.clock()), highlight=False, soft_wrap=True)

        board.on_change = printed
        try:
            yield
        finally:
            board.on_change = None
        return
    # Live must not take over sys.stdout/stderr: they go to the log file.
    view = Live(
        BoardView(board),
        console=console,
        refresh_per_second=4,
        transient=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with view:
        yield


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[TextIO]:
    """Send this process's fd 1 and 2 (and so what its children inherit) to `log`; yield a
    stream on the original stdout for the console."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    term = os.fdopen(os.dup(1), "w", buffering=1, encoding=encoding, errors="replace")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield term
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
        term.close()
