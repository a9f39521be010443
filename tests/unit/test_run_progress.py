"""`tierline up`'s quiet console without Ray: the log level setting, the step board and
its display, which log lines a failure shows, the Makefile's step runner, and the fd
redirect. The failure texts are Serve's and pip's own, saved from real runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from tierline.cli.progress import (
    BoardView,
    StepBoard,
    apply_deployments,
    failure_report,
    output_to,
    step_line,
)
from tierline.cli.quiet import LogLevel, error_line, log_level, read_tail, relevant_tail, run_step
from tierline.cli.run import UpWatcher
from tierline.cli.startup import DeployFailed, DeploymentState, DeployTimeout

SITE = "/work/main/.venv/lib/python3.11/site-packages"
# The message of a tier whose vLLM engine could not start (its config named an unknown
# architecture), as serve.status() gave it after three tries; then the controller's last
# lines about it.
REPLICA_TRACEBACK = f"""RuntimeError: Traceback (most recent call last):
  File "{SITE}/ray/serve/_private/replica.py", line 1867, in initialize
    await self._user_callable_wrapper.initialize_callable()
  File "{SITE}/ray/serve/_private/replica.py", line 4082, in initialize_callable
    await self._call_func_or_gen(
  File "{SITE}/ray/serve/_private/replica.py", line 4010, in _call_func_or_gen
    result = await result
             ^^^^^^^^^^^^
  File "{SITE}/ray/llm/_internal/serve/core/server/llm_server.py", line 211, in __init__
    await self.start()
  File "{SITE}/ray/llm/_internal/serve/core/server/llm_server.py", line 257, in start
    await asyncio.wait_for(self._start_engine(), timeout=ENGINE_START_TIMEOUT_S)
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/tasks.py", line 489, in wait_for
    return fut.result()
           ^^^^^^^^^^^^
  File "{SITE}/ray/llm/_internal/serve/core/server/llm_server.py", line 315, in _start_engine
    await self.engine.start()
  File "{SITE}/ray/llm/_internal/serve/engines/vllm/vllm_engine.py", line 412, in start
    ) = self._prepare_engine_config(callback.ctx)
        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "{SITE}/ray/llm/_internal/serve/engines/vllm/vllm_engine.py", line 222, in _get_vllm_engine_config
    raise RuntimeError(f"Failed to create vLLM engine config: {{e}}") from None
RuntimeError: Failed to create vLLM engine config: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached files.
Check your internet connection or see how to run the library in offline mode at 'https://huggingface.co/docs/transformers/installation#offline-mode'."""  # noqa: E501 (Serve's lines as they are)
DEPLOY_FAILED_MESSAGE = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its "
    "constructor or initial health check failing. See controller logs for details. Error:\n"
    + REPLICA_TRACEBACK
)
CONTROLLER_END = [
    "INFO 2026-12-02 03:54:46,029 controller 14908 -- Stopping Replica(id='cmye56w1', "
    "deployment='tier-small', app='tierline-bad') (currently ReplicaState.STARTING).",
    "ERROR 2026-12-02 03:54:46,033 controller 14908 -- Failed to update the deployments "
    "['tier-small'].",
    "INFO 2026-12-02 03:54:46,147 controller 14908 -- Replica(id='cmye56w1', "
    "deployment='tier-small', app='tierline-bad') is stopped.",
    "INFO 2026-12-02 03:54:47,114 controller 14908 -- Controller shutdown started.",
    "INFO 2026-12-02 03:54:47,115 controller 14908 -- Deleting app 'tierline-bad'.",
]
# pip on a requirement that no index has (its two ERROR lines end the output).
PIP_FAILURE = [
    "+ .venv/bin/pip install torch==2.13.0",
    "Looking in links: /opt/pypi-more/simple",
    "ERROR: Could not find a version that satisfies the requirement torch==2.13.0 "
    "(from versions: none)",
    "ERROR: No matching distribution found for torch==2.13.0",
]
# The driver's own log on a clean start: nothing in it states an error.
QUIET_START_LOG = [
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to "
    "opt out. For more information, see https://docs.ray.io/en/latest/ray-security/token-auth.html",
    'INFO 2026-12-02 03:47:24,480 serve 13214 -- Started Serve in namespace "serve".',
    "WARNING 12-02 03:47:37 [importing.py:83] Triton is installed, but `triton.backends` "
    "could not be imported. Disabling Triton.",
    "INFO 2026-12-02 03:47:40,080 serve 13214 -- ============== Deployment Options ==============",
]


# --- the log level ------------------------------------------------------------------


def test_the_log_level_defaults_to_info_and_only_debug_is_verbose() -> None:
    assert log_level({}) is LogLevel.INFO
    assert log_level({"TIERLINE_LOG_LEVEL": ""}) is LogLevel.INFO
    assert log_level({"TIERLINE_LOG_LEVEL": " DEBUG "}) is LogLevel.DEBUG
    assert log_level({"TIERLINE_LOG_LEVEL": "warn"}) is LogLevel.WARNING
    assert [lv.verbose for lv in LogLevel] == [True, False, False, False]


def test_a_bad_log_level_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"TIERLINE_LOG_LEVEL='loud': expected one of debug"):
        log_level({"TIERLINE_LOG_LEVEL": "loud"})


# --- which lines a failure shows -----------------------------------------------------


def test_a_replica_traceback_is_shown_from_its_start_to_the_error() -> None:
    lines = DEPLOY_FAILED_MESSAGE.splitlines()
    tail = relevant_tail(lines, 30)
    assert len(tail) <= 30
    assert tail[-2].startswith("RuntimeError: Failed to create vLLM engine config")
    assert "RuntimeError: Traceback (most recent call last):" in tail
    assert error_line(lines).startswith("RuntimeError: Failed to create vLLM engine config")


def test_a_short_window_keeps_the_error_and_drops_the_traceback_head() -> None:
    tail = relevant_tail(DEPLOY_FAILED_MESSAGE.splitlines(), 5)
    assert len(tail) == 5
    assert tail[-2].startswith("RuntimeError: Failed to create vLLM engine config")


def test_lines_after_the_last_error_are_cut_to_two() -> None:
    lines = [*REPLICA_TRACEBACK.splitlines(), *CONTROLLER_END]
    tail = relevant_tail(lines, 30)
    assert tail[-3].startswith("ERROR 2026-12-02 03:54:46,033 controller")
    assert tail[-1].endswith("Controller shutdown started.")


def test_pip_errors_end_the_tail() -> None:
    assert relevant_tail(PIP_FAILURE, 30) == PIP_FAILURE
    assert error_line(PIP_FAILURE).startswith("ERROR: No matching distribution")


def test_without_an_error_the_tail_is_the_last_lines_or_nothing() -> None:
    assert relevant_tail(QUIET_START_LOG, 2) == QUIET_START_LOG[-2:]
    assert relevant_tail(QUIET_START_LOG, 2, errors_only=True) == []
    assert relevant_tail([], 30) == []


def test_terminal_codes_are_dropped(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    log.write_text("\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed.\r\n\n\n")
    assert read_tail(log) == ["(raylet) Task ServeController.graceful_shutdown failed."]
    assert read_tail(tmp_path / "missing.log") == []


# --- the step board -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def local_board(clock: Clock) -> StepBoard:
    board = StepBoard(clock)
    for key, label in [("ray", "Ray"), ("tier-small", "engine small"), ("gateway", "gateway")]:
        board.add(key, label)
    board.add("warmup", "warm-up")
    return board


def test_steps_time_from_their_start_to_their_end() -> None:
    clock = Clock()
    board = local_board(clock)
    changes: list[tuple[str, str]] = []
    board.on_change = lambda s: changes.append((s.key, s.state))
    board.start("ray", "8 logical CPUs")
    clock.now += 7
    board.done("ray")
    clock.now += 3
    ray = board.step("ray")
    assert ray is not None
    assert (ray.state, ray.detail, ray.elapsed(clock.now)) == ("done", "8 logical CPUs", 7)
    board.start("tier-small")
    board.start("tier-small", "0/1 replicas running, 1 starting")  # no second change
    assert changes == [("ray", "running"), ("ray", "done"), ("tier-small", "running")]
    clock.now += 60
    board.stop_running("interrupted")
    small = board.step("tier-small")
    assert small is not None
    assert (small.state, small.detail, small.elapsed(clock.now + 5)) == (
        "stopped",
        "interrupted",
        60,
    )


def test_deployment_states_move_their_steps() -> None:
    clock = Clock()
    board = local_board(clock)
    apply_deployments(
        board,
        [
            DeploymentState("tier-small", "UPDATING", "", {"STARTING": 1}),
            DeploymentState("gateway", "HEALTHY", "", {"RUNNING": 1}),
            DeploymentState("quota", "UPDATING"),  # not on the board yet: before the gateway
        ],
    )
    assert [s.key for s in board.steps] == ["ray", "tier-small", "quota", "gateway", "warmup"]
    states = {s.key: (s.state, s.detail) for s in board.steps}
    assert states["tier-small"] == ("running", "0/1 replicas running, 1 starting")
    assert states["gateway"] == ("done", "1/1 replicas running")
    assert states["quota"] == ("running", "updating")
    apply_deployments(
        board, [DeploymentState("tier-small", "DEPLOY_FAILED", DEPLOY_FAILED_MESSAGE)]
    )
    small = board.step("tier-small")
    assert small is not None and small.state == "failed"
    assert small.detail.startswith("RuntimeError: Failed to create vLLM engine config")


def test_an_unhealthy_deployment_keeps_running_with_its_error() -> None:
    board = local_board(Clock())
    msg = "Replica died: ray.exceptions.ActorDiedError: The actor died unexpectedly."
    apply_deployments(board, [DeploymentState("tier-small", "UNHEALTHY", msg, {"RUNNING": 1})])
    small = board.step("tier-small")
    assert small is not None and small.state == "running"
    assert small.detail == f"unhealthy: {msg}"


def test_start_phases_drive_the_board() -> None:
    board = local_board(Clock())
    watcher = UpWatcher(board)
    watcher.phase("ray", "8 logical CPUs")
    watcher.phase("deploy", "/tmp/ray/session_x/logs")
    watcher.phase("ready", "http://127.0.0.1:8000")
    watcher.waiting("503 not ready")
    states = {s.key: (s.state, s.detail) for s in board.steps}
    assert states["ray"] == ("done", "8 logical CPUs")
    assert states["tier-small"] == ("running", "deploying")
    assert states["warmup"] == ("running", "/readyz: 503 not ready")
    assert watcher.ray_logs == "/tmp/ray/session_x/logs"


def test_a_narrow_terminal_truncates_details_not_labels() -> None:
    clock = Clock()
    board = local_board(clock)
    board.start("ray")
    board.done("ray", "8 logical CPUs")
    apply_deployments(
        board, [DeploymentState("tier-small", "DEPLOY_FAILED", DEPLOY_FAILED_MESSAGE)]
    )
    out = io.StringIO()
    Console(file=out, width=60).print(BoardView(board))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(len(line) <= 60 for line in lines)
    assert "engine small" in lines[1] and "RuntimeError: Failed" in lines[1]
    assert lines[1].rstrip().endswith("…")
    small = board.step("tier-small")
    assert small is not None
    assert step_line(small, clock.now).plain.startswith("✗ engine small")


# --- the failure report ---------------------------------------------------------------


def test_a_failed_deploy_shows_serves_error_and_where_the_logs_are() -> None:
    err = DeployFailed(
        "tierline-bad",
        "Failed to update the deployments ['tier-small'].",
        [
            DeploymentState("tier-small", "DEPLOY_FAILED", DEPLOY_FAILED_MESSAGE),
            DeploymentState("gateway", "HEALTHY", "", {"RUNNING": 1}),
        ],
    )
    log = Path(".tierline/logs/up-20261202-035104.log")
    out = failure_report(err, QUIET_START_LOG, log, "/tmp/ray/session_x/logs")
    assert out[0] == (
        "error: Deploying application tierline-bad failed: "
        "Failed to update the deployments ['tier-small']."
    )
    assert out[1] == "tier-small: DEPLOY_FAILED; Serve says:"
    assert any(line.startswith("  RuntimeError: Failed to create vLLM engine") for line in out)
    assert not any("Token authentication" in line for line in out)  # Serve's error suffices
    assert any(line.startswith("hint: a replica failed to start") for line in out)
    assert any(str(log) in line and "/tmp/ray/session_x/logs/" in line for line in out)
    assert "tierline up -v" in out[-1]


def test_a_log_of_start_up_chatter_is_not_shown(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    log.write_text("\n".join(QUIET_START_LOG) + "\n")
    err = TimeoutError("http://127.0.0.1:8000/readyz not ready after 900s: 503 not ready")
    out = failure_report(err, read_tail(log, errors_only=True), log, "")
    assert not any(line.startswith("last lines") for line in out)
    assert out[1].startswith("hint: not ready in time")
    assert any("/tmp/ray/session_latest/logs/" in line for line in out)


def test_error_lines_in_our_log_are_shown() -> None:
    lines = [*QUIET_START_LOG, *REPLICA_TRACEBACK.splitlines(), *CONTROLLER_END]
    tail = relevant_tail(lines, 30, errors_only=True)
    log = Path(".tierline/logs/up.log")
    out = failure_report(RuntimeError("boom"), tail, log, "")
    assert out[:2] == ["error: boom", f"last lines of {log}:"]
    assert out[2 : 2 + len(tail)] == [f"  {line}" for line in tail]
    assert any("Failed to update the deployments" in line for line in out)


def test_a_deploy_timeout_names_what_it_waited_on() -> None:
    slow = DeploymentState(
        "tier-large",
        "UPDATING",
        "Deployment 'tier-large' in application 'tierline-local' has 1 replicas that have "
        "taken more than 30s to initialize.",
        {"STARTING": 1},
    )
    err = DeployTimeout("tierline-local", 900, [slow, DeploymentState("gateway", "HEALTHY")])
    assert (
        str(err)
        == "application tierline-local not running after 900s (waiting on tier-large UPDATING)"
    )
    out = failure_report(err, [], None, "")
    assert out[1] == "tier-large: UPDATING, 0/1 replicas running, 1 starting; Serve says:"
    assert not any("tierline up -v" in line for line in out)  # already verbose: no log file


# --- the Makefile's step runner and the redirect ------------------------------------------


def test_a_step_prints_one_line_and_keeps_its_output_in_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "models.log"
    code = run_step(
        "models", log, [sys.executable, "-c", "print('models/tiny-small: present')"], {}
    )
    out = capfd.readouterr().out
    assert code == 0
    assert out.startswith("✓ models (") and out.count("\n") == 1
    assert log.read_text() == "models/tiny-small: present\n"


def test_a_failed_step_prints_the_logs_tail(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "install.log"
    script = "import sys; print('\\n'.join(sys.argv[1:])); sys.exit(1)"
    code = run_step("venv", log, [sys.executable, "-c", script, *PIP_FAILURE], {})
    out = capfd.readouterr().out.splitlines()
    assert code == 1
    assert out[0].startswith("✗ venv failed after") and out[0].endswith("(exit 1)")
    assert out[1] == f"  last lines of {log}:"
    assert out[2:6] == [f"    {line}" for line in PIP_FAILURE]
    assert "TIERLINE_LOG_LEVEL=debug" in out[-1]


def test_at_debug_a_step_shows_its_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "models.log"
    env = {"TIERLINE_LOG_LEVEL": "debug"}
    assert run_step("models", log, [sys.executable, "-c", "print('built')"], env) == 0
    assert capfd.readouterr().out.startswith("built\n✓ models (")


def test_the_redirect_sends_fds_and_children_to_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "up.log"
    with output_to(log) as term:
        os.write(1, b"raylet noise\n")
        os.write(2, b"vllm warning\n")
        subprocess.run([sys.executable, "-c", "print('child output')"], check=True)
        term.write("progress\n")
    os.write(1, b"after\n")
    captured = capfd.readouterr()
    assert captured.out == "progress\nafter\n"
    assert captured.err == ""
    assert log.read_text().splitlines() == ["raylet noise", "vllm warning", "child output"]
