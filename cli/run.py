from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from tierline.cli import examples, quiet
from tierline.cli.progress import StepBoard, apply_deployments, failure_report, output_to, shown
from tierline.cli.sample import Sample, ensure_sample
from tierline.cli.startup import DeploymentState
from tierline.cli.validate import load_or_exit
from tierline.cluster.spec import ClusterSpec, deployment_name

if TYPE_CHECKING:
    from tierline.cli.local import LocalRun


class UpWatcher:
    """`local.start`'s phases and deployment states onto the board."""

    def __init__(self, board: StepBoard) -> None:
        self.board = board
        self.ray_logs = ""

    def phase(self, name: str, detail: str = "") -> None:
        if name == "ray":
            self.board.start("ray", detail)
        elif name == "deploy":
            self.ray_logs = detail
            self.board.done("ray")
            for s in self.board.steps:
                if s.key not in ("ray", "warmup"):
                    self.board.start(s.key, "deploying")
        elif name == "ready":
            self.board.start("warmup", "waiting for /readyz")

    def deployments(self, states: Sequence[DeploymentState]) -> None:
        apply_deployments(self.board, states)

    def waiting(self, last: str) -> None:
        self.board.update("warmup", f"/readyz: {last}")


def up(
    spec_path: Path = typer.Argument(Path("configs/local.yaml"), help="Spec to deploy."),
    ready_timeout_s: float = typer.Option(
        900.0, help="How long to wait for the deploy, and then for /readyz."
    ),
    sample: Path | None = typer.Option(
        None,
        help="With RAG on: a folder of documents ingested into the collection "
        "`tierline_docs` of the local key's tenant on first start (`make run`: docs/).",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help=f"Ray's and vLLM's logs on the console ({quiet.LOG_LEVEL_ENV}=debug).",
    ),
) -> None:
    """Start a local Ray head, deploy the spec on Ray Serve, and serve until Ctrl-C.

    The console shows the start-up steps, then the endpoint. Ray's and vLLM's output goes
    to a file under .tierline/logs/ (with -v or TIERLINE_LOG_LEVEL=debug, to the console)."""
    try:
        level = quiet.log_level()
    except ValueError as err:
        Console(stderr=True).print(f"error: {err}", highlight=False)
        raise typer.Exit(2) from None
    spec = load_or_exit(spec_path)
    log_path = quiet.LOG_DIR / f"up-{time.strftime('%Y%m%d-%H%M%S')}.log"
    verbose = verbose or level.verbose
    with contextlib.ExitStack() as stack:
        console = Console() if verbose else Console(file=stack.enter_context(output_to(log_path)))
        handler = logging.StreamHandler()  # stderr: the log file, or with -v the console
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        tierline_log = logging.getLogger("tierline")
        tierline_log.addHandler(handler)
        tierline_log.setLevel(level.value.upper())
        stack.callback(tierline_log.removeHandler, handler)
        code = _up(spec, spec_path, console, None if verbose else log_path, ready_timeout_s, sample)
    if code:
        raise typer.Exit(code)


def _up(
    spec: ClusterSpec,
    spec_path: Path,
    console: Console,
    log_path: Path | None,
    timeout_s: float,
    sample_dir: Path | None = None,
) -> int:
    from tierline.cli import local

    key = _local_key(spec, console)
    board = StepBoard()
    board.add("ray", "Ray")
    for t in spec.engine_tiers:
        board.add(deployment_name(t), f"engine {t.name}")
    board.add("gateway", "gateway")
    board.add("warmup", "warm-up")
    seeding = sample_dir is not None and spec.rag.enabled and key is not None
    if seeding:
        board.add("sample", "sample docs")
    watcher = UpWatcher(board)
    stop = threading.Event()
    # Ctrl-C stops a start half way too (cleanly: `local.stop()` below), also where the
    # shell that started us left SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    started, code = False, 0
    sample: Sample | None = None
    title = f"tierline up {spec_path}" + (f" (logs: {log_path})" if log_path else "")
    try:
        with shown(board, console, title, live=console.is_terminal and log_path is not None):
            try:
                metrics_port = local.metrics_port_for(local.DEFAULT_METRICS_PORT)
                run = local.start(spec, timeout_s, metrics_port, watcher=watcher)
                started = True
                # /readyz is 200 once each tier has answered a first request: the warm-up.
                board.done("warmup", f"{len(spec.tiers)} tier(s) ready")
                if seeding:
                    assert sample_dir is not None and key is not None
                    sample = _ingest_sample(board, run.endpoint, key, sample_dir)
            except BaseException as err:
                board.stop_running("interrupted" if isinstance(err, KeyboardInterrupt) else None)
                raise
        # Installed after ray.init on purpose: Ray's own fatal-signal handler would
        # otherwise run first and leave the driver unable to shut Serve down cleanly.
        # SIGINT too: a shell that starts us in the background leaves Ctrl-C ignored.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        took = time.monotonic() - t0
        _banner(console, spec, run, key, log_path, watcher.ray_logs, took, sample)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    except Exception as err:
        code = 1
        tail = quiet.read_tail(log_path, errors_only=True) if log_path is not None else []
        for line in failure_report(err, tail, log_path, watcher.ray_logs):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    finally:
        graceful = started and not local.node_going_down()
        if started and not graceful:
            console.print("Ray is stopping already: no drain")
        elif started:
            console.print(f"draining (up to {spec.gateway.drain_timeout_s:.0f}s)...")
            left: list[int] = []
            # Bounded, and given up on at once if Ray's daemons go (a group SIGTERM).
            finished = local.run_bounded(
                lambda: left.append(local.drain(spec)), spec.gateway.drain_timeout_s + 30
            )
            if not finished:
                console.print("drain cut short: Ray is stopping")
            elif left and left[0]:
                console.print(f"{left[0]} request(s) still running at the end of the window")
        console.print("shutting down...")
        local.stop(graceful=graceful and not local.node_going_down())
        console.print("stopped.")
    return code


def _banner(
    console: Console,
    spec: ClusterSpec,
    run: LocalRun,
    key: Path | None,
    log_path: Path | None,
    ray_logs: str,
    took: float,
    sample: Sample | None = None,
) -> None:

    p = console.print
    p(f"[green]ready[/] in {took:.0f}s: tiers {', '.join(t.name for t in spec.tiers)}")
    rows = [
        ("endpoint", f"{run.endpoint} (OpenAI-compatible, /v1)"),
        ("metrics", f"{run.metrics_url} (Prometheus; `tierline status`)"),
    ]
    if key is not None:
        rows.append(("API key", f"{_rel(key)} (header 'Authorization: Bearer <key>')"))
    if log_path is not None:
        rows.append(("logs", str(log_path)))
    if ray_logs:
        rows.append(("Ray logs", ray_logs))
    if sample is not None:
        rows.append(
            (
                "RAG",
                f"collection {sample.collection}: {sample.documents} documents, "
                f"{sample.chunks} chunks (`tierline rag query -c {sample.collection} ...`)",
            )
        )
    for name, value in rows:
        p(f"  {name:<9} {value}", highlight=False, markup=False, soft_wrap=True)
    # Real answers first: the banner asks both example questions and shows what came back.
    api_key = key.read_text().strip() if key is not None else None
    for ex in examples.examples(sample.collection if sample is not None else None):
        command = examples.curl(run.endpoint, ex.body, _rel(key) if key else None)
        p(f"{ex.title}:\n  {command}", highlight=False, markup=False, soft_wrap=True)
        try:
            shown_answer = examples.describe(examples.ask(run.endpoint, api_key, ex.body))
        except Exception as err:  # the cluster is up: say why, and go on serving
            shown_answer = f"(no answer: {str(err)[:200]})"
        p("  " + shown_answer, highlight=False, markup=False, soft_wrap=True)
    p("Ctrl-C stops the cluster.")


def _ingest_sample(board: StepBoard, url: str, key_file: Path, folder: Path) -> Sample | None:
    """The sample corpus on first start; a failure is shown and the cluster keeps serving."""
    board.start("sample", f"ingesting {folder}")
    try:
        sample = ensure_sample(url, key_file.read_text().strip(), folder)
    except Exception as err:  # the cluster is up: say why, and go on serving
        board.fail("sample", str(err)[:200])
        return None
    verb = "ingested" if sample.ingested_now else "already there"
    board.done("sample", f"{sample.documents} documents, {sample.chunks} chunks ({verb})")
    return sample


def _rel(path: Path) -> Path:
    """`path` relative to the working directory when it is under it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _local_key(spec: ClusterSpec, console: Console) -> Path | None:
    """On first start, make a local API key next to the spec's keys file (mode 600)."""
    auth = spec.gateway.auth
    if not auth.enabled or auth.keys_file is None:
        return None
    from tierline.deployments.gateway.pipeline.auth import ensure_local_key

    keys_file = Path(auth.keys_file)
    _, created = ensure_local_key(keys_file.parent, keys_file)
    key_path = keys_file.parent / "api-key"
    if created:
        console.print(f"created a local API key in {key_path} (mode 600)", highlight=False)
    return key_path
