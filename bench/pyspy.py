"""Where a serving process spends its CPU: py-spy profiles, summarised.

`Recorder` runs `py-spy record --format raw --gil --nolineno` against processes for as long as a
benchmark phase lasts (it is stopped with SIGINT, on which py-spy writes its file): only the
thread holding the GIL is sampled, so the samples are the process's Python work (native
threads waiting in C++, such as Ray's core worker loop and gRPC's pollers, would otherwise
count as busy). `summarise` turns the collapsed stacks into shares of those samples:
which package the leaf frame was in, which packages were on the stack, and the leaf
functions that took the most. py-spy comes with the dev extra; without it the benchmarks
run and say the profile was not taken.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
TIERLINE_FOLDERS = frozenset({"deployments", "router", "rag", "cluster", "cli"})
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<mod>[^/]+?)(?:\.py)?(?:/|$)")


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH; None when missing."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def package_of(path: str) -> str:
    """A frame's file, as the package it belongs to: `vllm`, `ray.serve`, `starlette`,
    `asyncio`, `tierline.deployments`, ... py-spy writes most paths relative to the import
    root they were found under (`fastapi/routing.py`, `asyncio/events.py`,
    `deployments/gateway.py`); absolute ones are cut at `site-packages/` or the standard
    library's folder."""
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        m = _STDLIB.search(path)
        if m is None:
            return "other"
        path = path[m.start("mod") :]
    parts = path.split("/")
    top = parts[0].removesuffix(".py")
    if top in TIERLINE_FOLDERS:
        return f"tierline.{top}"
    if top == "ray" and len(parts) > 2:
        return f"ray.{parts[1]}"
    return top or "other"


def parse_frame(frame: str) -> tuple[str, str]:
    """`(function, file)` of one py-spy raw frame, `func (file:line)`."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


@dataclass
class Summary:
    samples: int = 0
    by_package: Counter[str] = field(default_factory=Counter)
    by_function: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    def as_dict(self, top: int = 12) -> dict[str, Any]:
        n = max(self.samples, 1)

        def shares(c: Counter[str]) -> list[list[Any]]:
            return [[k, round(v / n, 3)] for k, v in c.most_common(top)]

        return {
            "samples": self.samples,
            "self_by_package": shares(self.by_package),
            "self_by_function": shares(self.by_function),
            "inclusive_by_package": shares(self.inclusive),
        }


def summarise(raw: str) -> Summary:
    """Shares from py-spy's raw (collapsed) output: one `frame;frame;...;leaf count` per
    line, outermost frame first; frames of a thread's name or process are skipped."""
    out = Summary()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        out.samples += count
        func, path = frames[-1]
        pkg = package_of(path)
        out.by_package[pkg] += count
        out.by_function[f"{pkg}: {func}"] += count
        for p in {package_of(file) for _, file in frames}:
            out.inclusive[p] += count
    return out


class Recorder:
    """py-spy recording of some processes until `stop()`."""

    def __init__(self, folder: Path, rate: int = 250) -> None:
        self.folder = folder
        self.rate = rate
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.exe = py_spy()

    def start(self, name: str, pid: int) -> bool:
        if self.exe is None:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / f"{name}.{pid}.txt"
        argv = [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate)]
        argv += ["--format", "raw", "--output", str(out), "--nonblocking", "--gil", "--nolineno"]
        log = (self.folder / f"{name}.{pid}.log").open("wb")
        self.procs[name] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), out)
        return True

    def stop(self, timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
        """Stop every recording; `{name: summary}` of those that wrote a profile."""
        result: dict[str, dict[str, Any]] = {}
        for name, (proc, out) in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if out.exists():
                result[name] = summarise(out.read_text(errors="replace")).as_dict()
        self.procs = {}
        return result
