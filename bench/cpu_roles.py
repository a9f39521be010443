"""Which part of a serving stack each process is, and the CPU each part spent.

Plain data in, plain data out: process command lines and CPU samples go in, roles and
CPU seconds (or milliseconds per request) come out. `bench.report` re-exports these
names; tested in tests/unit/test_bench_report.py.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["NATIVE_ROLES", "cpu_by_role", "is_serving_role", "process_role", "serving_cpu_ms"]

# Roles of processes that are not Python: their CPU counts, py-spy has nothing to sample.
NATIVE_ROLES = frozenset({"haproxy"})


def serving_cpu_ms(system: str, per: Mapping[str, float]) -> float | None:
    """CPU ms per request of the processes a system puts in front of vLLM's engine: bare
    vLLM's API server; for the others their Serve replicas (ingress or LLMRouter,
    LLMServer / gateway, tier engines), the Serve proxy and, in the direct-streaming mode,
    HAProxy and its manager actor. None when none was sampled."""
    if system == "bare":
        return per.get("vllm api server")
    parts = [v for role, v in per.items() if is_serving_role(role)]
    return round(sum(parts), 2) if parts else None


def is_serving_role(role: str) -> bool:
    """A process a Serve-based system puts between the client and vLLM's engine core."""
    return role.endswith(" replica") or role in ("serve proxy", "haproxy", "haproxy manager")


def process_role(cmdline: str) -> str:
    """Which part of a serving stack a process is, from its command line."""
    if cmdline.startswith("ray::ServeReplica:"):
        # ray::ServeReplica:<app>:<deployment>[.<method running>]; Ray Serve LLM's engine
        # deployment is named LLMServer:<model id>, its ingress OpenAiIngress; in the
        # direct-streaming mode the LLMServer is the ingress and HAProxy asks the LLMRouter
        # deployment (the ingress request router) where to send each request.
        _app, _, deployment = cmdline.split()[0].removeprefix("ray::ServeReplica:").partition(":")
        deployment = deployment.split(".", 1)[0]
        if deployment.startswith("LLMServer:"):
            return "LLMServer replica"
        if deployment == "OpenAiIngress":
            return "ingress replica"
        if deployment == "LLMRouter":
            return "LLMRouter replica"
        return "gateway replica" if deployment == "gateway" else f"{deployment} replica"
    if cmdline.startswith("ray::ProxyActor"):
        return "serve proxy"
    if cmdline.startswith("ray::HAProxyManager"):  # the actor that configures HAProxy
        return "haproxy manager"
    if cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] == "haproxy":  # the C binary itself
        return "haproxy"
    if cmdline.startswith("VLLM::EngineCore"):
        return "vllm engine core"
    if cmdline.startswith("VLLM::Worker"):
        return "vllm worker"
    if "vllm_cli.py serve" in cmdline:
        return "vllm api server"
    if cmdline.startswith("ray::"):
        return "ray other"
    return "other"


def cpu_by_role(
    before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent per role between two samples of `{pid: (cmdline, cpu_s)}`.
    A process that appeared in between counts from zero."""
    out: dict[str, float] = {}
    for pid, (cmdline, cpu) in after.items():
        start = before.get(pid, (cmdline, 0.0))[1]
        role = process_role(cmdline)
        out[role] = out.get(role, 0.0) + max(0.0, cpu - start)
    return {k: round(v, 3) for k, v in sorted(out.items())}
