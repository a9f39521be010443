"""Chart tests render and validate files; they never start Ray (as in tests/unit)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError("tests/k8s must not start Ray: they only render and validate")

    monkeypatch.setattr(ray, "init", refuse)
