"""A quiet console: the log level setting, which log lines to show on a failure, and the
step runner the Makefile uses (`python cli/quiet.py step NAME LOG -- CMD...`).

Standard library only: make runs this file with the system Python before the venv exists.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

LOG_LEVEL_ENV = "TIERLINE_LOG_LEVEL"
LOG_DIR = Path(".tierline/logs")
TAIL_LINES = 30


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def verbose(self) -> bool:
        """Debug puts Ray's and vLLM's logs on the console, as before the quiet console."""
        return self is LogLevel.DEBUG


def log_level(environ: Mapping[str, str] | None = None) -> LogLevel:
    """$TIERLINE_LOG_LEVEL (debug, info, warning, error; default info)."""
    env = os.environ if environ is None else environ
    raw = env.get(LOG_LEVEL_ENV, "").strip().lower()
    if not raw:
        return LogLevel.INFO
    try:
        return LogLevel({"warn": "warning"}.get(raw, raw))
    except ValueError:
        names = ", ".join(level.value for level in LogLevel)
        raise ValueError(f"{LOG_LEVEL_ENV}={raw!r}: expected one of {names}") from None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# A line that states an error: a Python exception line (`ValueError: ...`,
# `ray.exceptions.RayActorError: ...`), a logged ERROR, pip's `ERROR:`.
_ERROR = re.compile(
    r"^\s*(?:\([^)]*\)\s*)?[\w.]*(?:Error|Exception|Exit)\b(?::|$)"
    r"|\bERROR\b|\bCRITICAL\b|\bFATAL\b"
)
_TRACEBACK = "Traceback (most recent call last)"


def clean(line: str) -> str:
    return _ANSI.sub("", line.replace("\r", "")).rstrip()


def relevant_tail(
    lines: Sequence[str], n: int = TAIL_LINES, errors_only: bool = False
) -> list[str]:
    """Up to `n` lines that explain a failure: those up to the last error line (from
    three lines before the traceback that leads to it, as far as `n` allows) and two
    lines after it; when no line states an error, the last `n` lines (none if
    `errors_only`: a log of start-up chatter explains nothing)."""
    text = [clean(line) for line in lines]
    while text and not text[-1]:
        text.pop()
    errors = [i for i, line in enumerate(text) if _ERROR.search(line)]
    if not errors:
        return [] if errors_only else text[-n:]
    end = min(len(text), errors[-1] + 3)
    start = max(0, end - n)
    # Begin a little before the traceback when the whole of it fits.
    tracebacks = [i for i in range(start, errors[-1] + 1) if _TRACEBACK in text[i]]
    if tracebacks:
        start = max(start, tracebacks[0] - 3)
    return text[start:end]


def error_line(lines: Sequence[str]) -> str:
    """The last line that states an error, else the last non-empty line."""
    text = [clean(line).strip() for line in lines]
    text = [line for line in text if line]
    errors = [line for line in text if _ERROR.search(line)]
    return (errors or text or [""])[-1]


def read_tail(
    path: Path, n: int = TAIL_LINES, max_bytes: int = 256_000, errors_only: bool = False
) -> list[str]:
    """`relevant_tail` of the end of a log file ([] when there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    return relevant_tail(data.splitlines(), n, errors_only)


def _marks() -> tuple[str, str, str]:
    utf = (sys.stdout.encoding or "").lower().replace("-", "") == "utf8"
    return ("✓", "✗", "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏") if utf else ("ok", "FAILED", "|/-\\")


def _last_line(path: Path) -> str:
    tail = read_tail(path, 1, max_bytes=4096)
    return tail[-1].strip() if tail else ""


def _ticker(name: str, log: Path, t0: float, stop: threading.Event) -> None:
    """On a terminal: a spinner, the elapsed time, and the log's last line."""
    spin = _marks()[2]
    width = shutil.get_terminal_size().columns - 1
    i = 0
    while not stop.wait(0.25):
        line = f"{spin[i % len(spin)]} {name} {time.monotonic() - t0:4.0f}s  {_last_line(log)}"
        sys.stdout.write("\r\x1b[2K" + line[:width])
        sys.stdout.flush()
        i += 1
    sys.stdout.write("\r\x1b[2K")


def run_step(name: str, log: Path, cmd: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run `cmd` with its output in `log` and one status line on the console; on failure,
    the log's relevant tail. At log level debug the output goes to the console instead."""
    ok, failed, _ = _marks()
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if log_level(environ).verbose:
        code = subprocess.call(list(cmd))
    else:
        stop = threading.Event()
        ticker = None
        if sys.stdout.isatty():
            ticker = threading.Thread(target=_ticker, args=(name, log, t0, stop), daemon=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT)
            if ticker is not None:
                ticker.start()
            try:
                code = proc.wait()
            except KeyboardInterrupt:  # the terminal sent it to the command too
                code = proc.wait()
            finally:
                stop.set()
                if ticker is not None:
                    ticker.join()
    took = time.monotonic() - t0
    if code == 0:
        print(f"{ok} {name} ({took:.0f}s)", flush=True)
        return 0
    print(f"{failed} {name} failed after {took:.0f}s (exit {code})", flush=True)
    if not log_level(environ).verbose:
        tail = read_tail(log)
        print(f"  last lines of {log}:" if tail else f"  {log} is empty")
        for line in tail:
            print(f"    {line}")
        print(f"  full output: {log}; `{LOG_LEVEL_ENV}=debug make ...` shows it as it runs")
    return code


def main(argv: Sequence[str]) -> int:
    usage = "usage: python cli/quiet.py step NAME LOG -- CMD [ARG...]"
    if len(argv) < 5 or argv[0] != "step" or argv[3] != "--":
        print(usage, file=sys.stderr)
        return 2
    try:
        return run_step(argv[1], Path(argv[2]), argv[4:], os.environ)
    except ValueError as err:  # a bad TIERLINE_LOG_LEVEL
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
