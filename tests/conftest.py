from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Gateway apps built in process settle (freeze) the heap after their first requests
    (`deployments.heap`), as a replica does; unfreeze it so the interpreter's shutdown
    frees everything, and extension modules do not report their objects as leaked."""
    import gc

    gc.unfreeze()
