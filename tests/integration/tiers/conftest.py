"""One local cluster for adapter and external tiers, next to a real vLLM OpenAI server.

The cluster runs one engine, `small` (tiny-small) with two tiny LoRA adapters, and several
external tiers that reach outside the cluster over loopback:
- `ext`: a real vLLM OpenAI server (`python -m vllm.entrypoints.openai.api_server`, what
  `vllm serve` runs) on tiny-small, standing in for a hosted provider;
- `ext-refused` / `ext-refused-fb`: a closed port (without / with `fallback_tier: small`);
- `ext-silent`: a socket that accepts connections and never answers (`timeout_s: 3`);
- `ext-429` / `ext-429-fb`: a tiny HTTP server that answers 429 with `Retry-After: 9`;
- `ext-trickle`: a tiny HTTP server that streams one chunk every half second, for ever,
  with one slot at the gateway (`max_ongoing_requests: 1, max_queued_requests: 0`).

`gateway.request_timeout_s` is 15 s here, so a trickling stream is cut within a test.
Tenants: `trickle` (`max_concurrent: 1`) and `narrow` (tiers `[ext-refused-fb]` only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from openai import OpenAI
from tierline.cli import local
from tierline.cluster.spec import ClusterSpec
from tierline.cluster.specfile import load_spec_text
from tierline.cluster.tiny_adapters import ensure_tiny_adapters
from tierline.cluster.tiny_models import ensure_tiny_models

from tests.integration.conftest import (
    API_KEY,
    KEYS_FILE,
    ROOT,
    descendants,
    free_port,
    leftover_processes,
)

UPSTREAM_MODEL = "upstream-tiny"
UPSTREAM_KEY = "sk-upstream-test"
RETRY_AFTER = "9"
REQUEST_TIMEOUT_S = 15


@dataclass(frozen=True)
class TiersCluster:
    url: str
    spec: ClusterSpec
    upstream_url: str

    def client(self, timeout_s: float = 120) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=timeout_s)

    def upstream(self) -> OpenAI:
        return OpenAI(base_url=self.upstream_url, api_key=UPSTREAM_KEY, max_retries=0)


def wait_for_memory(gib: float = 5.0, timeout_s: float = 300.0) -> None:
    """The machine is shared: start engines only with room for them."""
    deadline = time.monotonic() + timeout_s
    while psutil.virtual_memory().available < gib * 2**30 and time.monotonic() < deadline:
        time.sleep(10)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            )
        try:
            request = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
            )
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not up after {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class Upstream:
    url: str
    pid: int


@pytest.fixture(scope="package")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A real vLLM OpenAI server on loopback, in its own process group."""
    ensure_tiny_models(ROOT / "models")
    wait_for_memory()
    port = free_port()
    log = tmp_path_factory.mktemp("upstream") / "vllm.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(ROOT / "models" / "tiny-small"),
        "--served-model-name", UPSTREAM_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "512", "--dtype", "float32", "--enforce-eager",
        "--api-key", UPSTREAM_KEY,
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 600, proc, log)
        yield Upstream(f"http://127.0.0.1:{port}/v1", proc.pid)
    finally:
        tree = descendants(proc.pid)
        tree[proc.pid] = "vllm api_server"
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        leaked = leftover_processes(tree)
        assert not leaked, "vLLM server left processes behind:\n" + "\n".join(leaked)


class _RateLimited(BaseHTTPRequestHandler):
    """Every request: 429 with an OpenAI-style body and Retry-After, like a provider."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {"error": {"message": "rate limit reached", "type": "requests", "code": "429"}}
        ).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", RETRY_AFTER)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


class _Trickling(BaseHTTPRequestHandler):
    """Every POST: an SSE stream of one chat chunk every 0.5 s, until the client leaves."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {
            "id": "trickle",
            "object": "chat.completion.chunk",
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "delta": {"content": "drip "}, "finish_reason": None}],
        }
        try:
            for _ in range(600):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            return  # the gateway closed the request

    def log_message(self, *args: object) -> None:
        pass


@dataclass(frozen=True)
class FakeProviders:
    refused_port: int
    silent_port: int
    limited_port: int
    trickle_port: int


@pytest.fixture(scope="package")
def providers() -> Iterator[FakeProviders]:
    limited = ThreadingHTTPServer(("127.0.0.1", 0), _RateLimited)
    limited.daemon_threads = True
    thread = threading.Thread(target=limited.serve_forever, daemon=True)
    thread.start()
    trickle = ThreadingHTTPServer(("127.0.0.1", 0), _Trickling)
    trickle.daemon_threads = True
    threading.Thread(target=trickle.serve_forever, daemon=True).start()
    # Listens (the kernel completes connections) but never accepts or answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        yield FakeProviders(
            refused_port=free_port(),
            silent_port=silent.getsockname()[1],
            limited_port=limited.server_address[1],
            trickle_port=trickle.server_address[1],
        )
    finally:
        limited.shutdown()
        limited.server_close()
        trickle.shutdown()
        trickle.server_close()
        silent.close()


def tiers_spec(port: int, upstream_url: str, fakes: FakeProviders) -> ClusterSpec:
    def external(
        name: str, url: str, fallback: bool = False, tier: str = "", **extra: object
    ) -> str:
        fields = {
            "base_url": url,
            "model": UPSTREAM_MODEL,
            "api_key_env": "TIERLINE_TEST_UPSTREAM_KEY",
            "connect_timeout_s": 2,
            "timeout_s": 30,
            "health_check": "none",
            **extra,
        }
        fb = "\n    fallback_tier: small" if fallback else ""
        return (
            f"  - name: {name}\n    max_context_tokens: 512{fb}\n{tier}"
            f"    price_per_1m_input_tokens: 5\n    price_per_1m_output_tokens: 15\n"
            f"    external: {json.dumps(fields)}\n"
        )

    loop = "http://127.0.0.1:{}/v1"
    one_slot = "    max_ongoing_requests: 1\n    max_queued_requests: 0\n"
    text = f"""
name: tierline-tiers
tiers:
  - name: small
    model_source: ../models/tiny-small
    served_model_name: tiny-small
    max_context_tokens: 512
    dtype: float32
    engine_kwargs: {{enforce_eager: true}}
    env_vars: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
    max_adapters_per_replica: 2
    max_lora_rank: 8
    adapters:
      - {{name: tiny-a, source: ../models/adapters/tiny-a}}
      - {{name: tiny-b, source: ../models/adapters/tiny-b, served_model_name: tiny-b-bot}}
{external("ext", upstream_url, health_check="models", tokenizer="../models/tiny-small")}
{external("ext-refused", loop.format(fakes.refused_port))}
{external("ext-refused-fb", loop.format(fakes.refused_port), fallback=True)}
{external("ext-silent", loop.format(fakes.silent_port), timeout_s=3)}
{external("ext-429", loop.format(fakes.limited_port))}
{external("ext-429-fb", loop.format(fakes.limited_port), fallback=True)}
{external("ext-trickle", loop.format(fakes.trickle_port), tier=one_slot)}
router:
  policy: rules
  default_tier: small
  params:
    hard_tier: ext
gateway:
  host: 127.0.0.1
  port: {port}
  retries: 2
  request_timeout_s: {REQUEST_TIMEOUT_S}
  tenants:
    - {{name: trickle, max_concurrent: 1}}
    - {{name: narrow, tiers: [ext-refused-fb]}}
  auth:
    keys_file: {KEYS_FILE}
"""
    return load_spec_text(text, "tiers test spec", base_dir=ROOT / "configs")


@pytest.fixture(scope="package")
def cluster(upstream: Upstream, providers: FakeProviders) -> Iterator[TiersCluster]:
    ensure_tiny_adapters(ROOT / "models" / "tiny-small", ROOT / "models" / "adapters")
    spec = tiers_spec(free_port(), upstream.url, providers)
    # The gateway replica reads the key at start-up (Ray workers inherit the driver's env).
    os.environ["TIERLINE_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    wait_for_memory()
    run = local.start(spec, ready_timeout_s=600)
    try:
        yield TiersCluster(run.endpoint, spec, upstream.url)
    finally:
        server = {upstream.pid, *descendants(upstream.pid)}  # stopped by its own fixture
        ours = {p: c for p, c in descendants(os.getpid()).items() if p not in server}
        local.stop()
        leaked = leftover_processes(ours)
        assert not leaked, "cluster teardown left processes behind:\n" + "\n".join(leaked)
