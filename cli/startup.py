"""Watching a local cluster come up: Serve's per-deployment states while the application
deploys. (The warm-up is the gateway's own: /readyz answers 200 once each tier has served
a first request, so the user's first request is not an engine's slow first one.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEPLOY_POLL_S = 1.0
# Serve gives up on a deployment (DEPLOY_FAILED) after its replicas failed to start a few
# times in a row; that is final. UNHEALTHY (a health check failed) may still recover.
FAILED = "DEPLOY_FAILED"


@dataclass(frozen=True)
class DeploymentState:
    """One Serve deployment as `serve.status()` reports it."""

    name: str
    status: str  # UPDATING, HEALTHY, UNHEALTHY, DEPLOY_FAILED, UPSCALING, DOWNSCALING
    message: str = ""
    replicas: Mapping[str, int] = field(default_factory=dict)  # RUNNING, STARTING, ...

    def summary(self) -> str:
        """'1/2 replicas running, 1 starting'."""
        running = self.replicas.get("RUNNING", 0)
        total = sum(self.replicas.values())
        others = [f"{n} {s.lower()}" for s, n in sorted(self.replicas.items()) if s != "RUNNING"]
        return ", ".join([f"{running}/{total} replicas running", *others]) if total else ""


class DeployFailed(RuntimeError):
    """Serve gave up on the application (Serve's own wait raises the same message)."""

    def __init__(self, app: str, message: str, deployments: Sequence[DeploymentState]) -> None:
        super().__init__(f"Deploying application {app} failed: {message}")
        self.app = app
        self.deployments = list(deployments)

    @property
    def failed(self) -> list[DeploymentState]:
        return [d for d in self.deployments if d.status in (FAILED, "UNHEALTHY")]


class DeployTimeout(TimeoutError):
    def __init__(self, app: str, timeout_s: float, deployments: Sequence[DeploymentState]):
        waiting = [f"{d.name} {d.status}" for d in deployments if d.status != "HEALTHY"]
        super().__init__(
            f"application {app} not running after {timeout_s:.0f}s"
            + (f" (waiting on {', '.join(waiting)})" if waiting else "")
        )
        self.deployments = list(deployments)


class StartWatcher(Protocol):
    """What `local.start` reports while it works (all optional to act on)."""

    def phase(self, name: str, detail: str = "") -> None:
        """A phase begins: "ray", then "deploy", then "ready"."""

    def deployments(self, states: Sequence[DeploymentState]) -> None:
        """The application's deployments, about once a second while it deploys."""

    def waiting(self, last: str) -> None:
        """The last /readyz answer while the gateway is not ready yet."""


def _value(x: object) -> str:
    """An enum's value (Serve's str enums print as `Class.NAME`), else the text itself."""
    return str(getattr(x, "value", x))


def states_of(app_status: object) -> list[DeploymentState]:
    """Serve's `ApplicationStatusOverview` as plain states (Serve's enums are str)."""
    deployments: Mapping[str, object] = getattr(app_status, "deployments", {})
    return [
        DeploymentState(
            name=name,
            status=_value(getattr(d, "status", "")),
            message=str(getattr(d, "message", "") or ""),
            replicas={_value(k): int(v) for k, v in getattr(d, "replica_states", {}).items()},
        )
        for name, d in deployments.items()
    ]


def wait_deployed(
    app: str,
    timeout_s: float,
    on_states: Callable[[Sequence[DeploymentState]], None] | None = None,
) -> None:
    """Poll `serve.status()` until `app` is RUNNING; DeployFailed when Serve gives up on
    it, DeployTimeout after `timeout_s`."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    states: list[DeploymentState] = []
    while True:
        status = serve.status().applications.get(app)
        if status is not None:
            states = states_of(status)
            if on_states is not None:
                on_states(states)
            if _value(status.status) == "RUNNING":
                return
            if _value(status.status) == FAILED:
                raise DeployFailed(app, status.message, states)
        if time.monotonic() >= deadline:
            raise DeployTimeout(app, timeout_s, states)
        time.sleep(DEPLOY_POLL_S)
