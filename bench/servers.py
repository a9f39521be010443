"""The systems under test, started and stopped as child processes.

`BareVllm` runs `vllm serve` (through `bench/vllm_cli.py`, see there why) with the engine
arguments a tier of the spec would get; `ServeLlm` runs Ray Serve LLM's own OpenAI app
(`build_openai_app`) with the same model, engine arguments and environment through
`bench/serve_llm_server.py`, by default or in its direct-streaming mode (HAProxy);
`Tierline` runs a spec (one tier, or two for `model: auto`) through
`bench/tierline_server.py`. Each is started in its own session, waited on until it
answers, and stopped with a signal; `stop` then waits for every process it started (Ray's
daemons and workers, vLLM's engine processes, HAProxy) to be gone and kills what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_engine_kwargs(tier: Any) -> dict[str, Any]:
    """The vLLM engine arguments of `tier`, as tierline's engine deployment gives them to
    vLLM (see `deployments.engine.deployment.llm_config_kwargs`), less the model and its name. Both
    peers get exactly these: bare vLLM as flags, Ray Serve LLM as `engine_kwargs`."""
    kwargs: dict[str, Any] = {
        "max_model_len": tier.max_context_tokens,
        "tensor_parallel_size": tier.tensor_parallel_size,
        "pipeline_parallel_size": tier.pipeline_parallel_size,
    }
    if tier.dtype in ("float32", "bfloat16", "float16"):
        kwargs["dtype"] = tier.dtype
    kwargs.update(tier.engine_kwargs)
    return kwargs


def bare_vllm_args(tier: Any) -> list[str]:
    """`vllm serve` arguments equal to what tierline's engine deployment gives vLLM for
    `tier` (see `deployments.engine.deployment.llm_config_kwargs`)."""
    args = [str(tier.model_source), "--served-model-name", tier.model_name]
    for key, value in vllm_engine_kwargs(tier).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def serve_llm_config_kwargs(tier: Any) -> dict[str, Any]:
    """`ray.serve.llm.LLMConfig` keyword arguments for Ray Serve LLM's own app: the model,
    served name, engine arguments and engine environment bare vLLM gets, and Ray Serve
    LLM's defaults for everything else (deployment options, stream batching, ingress).

    The one setting beyond those: on a CPU tier the accelerator kind, since Serve LLM's
    default asks for a GPU; its CPU default is one `{"CPU": 1}` bundle per engine worker,
    what tierline's engine deployment reserves for a CPU tier with `cpus_per_replica: 1`.
    """
    kwargs: dict[str, Any] = {
        "model_loading_config": {
            "model_id": tier.model_name,
            "model_source": str(tier.model_source),
        },
        "engine_kwargs": vllm_engine_kwargs(tier),
        "runtime_env": {"env_vars": dict(tier.env_vars)},
    }
    if tier.uses_gpu:
        kwargs["accelerator_type"] = tier.accelerator_type
    else:
        kwargs["accelerator_config"] = {"kind": "cpu"}
    return kwargs


class _Server:
    name = "server"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._seen: dict[int, psutil.Process] = {}

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _remember_children(self) -> None:
        """Keep track of everything under our process (Ray may reparent some of it)."""
        if self.proc is None:
            return
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            self._seen.setdefault(p.pid, p)

    def cpu_sample(self) -> dict[int, tuple[str, float]]:
        """`{pid: (cmdline, user+system CPU seconds)}` for every process of this server."""
        self._remember_children()
        out = {}
        for pid, p in self._seen.items():
            try:
                t = p.cpu_times()
                out[pid] = (" ".join(p.cmdline()), t.user + t.system)
            except psutil.Error:
                continue
        return out

    def wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: see {self.log_path}"
                )
            self._remember_children()
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        self._remember_children()
                        return
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(1.0)
        raise TimeoutError(
            f"{self.name} not ready after {timeout_s:.0f}s ({last}): see {self.log_path}"
        )

    def wait_ready_line(self, timeout_s: float) -> str:
        """Wait for the server script's `ready <url> ...` line in its log; returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: see {self.log_path}"
                )
            self._remember_children()
            try:
                text = self.log_path.read_text(errors="replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                if line.startswith("ready "):
                    self._remember_children()
                    return line
            time.sleep(1.0)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s: see {self.log_path}")

    def stop(self, timeout_s: float = 90.0) -> list[str]:
        """Signal the server, wait for it and all of its processes; returns what had to be
        killed (empty when everything stopped by itself)."""
        killed: list[str] = []
        if self.proc is None:
            return killed
        self._remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.name == "vllm" else signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed.append(f"{self.proc.pid} {self.name} (main process)")
        deadline = time.monotonic() + 30.0
        alive = list(self._seen.values())
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _running(p)]
            if alive:
                time.sleep(0.5)
        for p in alive:
            try:
                killed.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
                p.kill()
            except psutil.Error:
                continue
        if self._log is not None:
            self._log.close()
        self.proc = None
        self._seen = {}
        return killed


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class BareVllm(_Server):
    name = "vllm"

    def __init__(self, tier: Any, port: int, log_path: Path) -> None:
        super().__init__(log_path)
        self.tier = tier
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def start(self, timeout_s: float = 600.0) -> None:
        argv = [PY, str(ROOT / "bench" / "vllm_cli.py"), "serve", *bare_vllm_args(self.tier)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        self._spawn(argv, dict(self.tier.env_vars))
        self.wait_http(f"{self.url}/health", timeout_s)
        _warm_up(self.url, self.tier.model_name, api_key=None)


class ServeLlm(_Server):
    """Ray Serve LLM's own OpenAI app (`ray.serve.llm.build_openai_app`) for one tier of
    the spec, run by `bench/serve_llm_server.py`: Serve proxy -> ingress replica ->
    LLMServer replica; with `direct_streaming`, its direct-streaming mode: HAProxy (asking
    the LLMRouter replica once per request) -> the LLMServer replica's own vLLM app."""

    def __init__(
        self,
        spec_path: Path,
        tier_name: str,
        port: int,
        log_path: Path,
        direct_streaming: bool = False,
    ) -> None:
        super().__init__(log_path)
        self.spec_path = spec_path
        self.tier_name = tier_name
        self.direct_streaming = direct_streaming
        self.name = "serve-llm-ds" if direct_streaming else "serve-llm"
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def start(self, timeout_s: float = 900.0) -> None:
        argv = [PY, "-m", "bench.serve_llm_server", str(self.spec_path)]  # cwd: the repo
        argv += ["--tier", self.tier_name, "--port", str(self.port)]
        argv += ["--ready-timeout-s", str(timeout_s)]
        if self.direct_streaming:
            argv.append("--direct-streaming")
        self._spawn(argv, {})
        # The script prints `ready` once a first completion has answered (vLLM's one-off
        # set-up, which bare vLLM's warm-up also pays before its runs).
        self.wait_ready_line(timeout_s + 60.0)


class Tierline(_Server):
    name = "tierline"

    def __init__(
        self,
        spec_path: Path,
        port: int,
        keys_file: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_path)
        self.env = dict(env or {})
        self.spec_path = spec_path
        self.keys_file = keys_file
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def start(self, timeout_s: float = 900.0) -> None:
        argv = [PY, str(ROOT / "bench" / "tierline_server.py"), str(self.spec_path)]
        argv += ["--port", str(self.port), "--keys-file", str(self.keys_file)]
        self._spawn(argv, self.env)
        # /readyz is 200 only after each tier served a real completion and chat request.
        self.wait_http(f"{self.url}/readyz", timeout_s)


def _warm_up(url: str, model: str, api_key: str | None) -> None:
    """One short completion: vLLM's first request pays seconds of one-off set-up, which
    tierline's /readyz already paid before reporting ready."""
    import json

    body = json.dumps({"model": model, "prompt": "ready", "max_tokens": 1}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()
