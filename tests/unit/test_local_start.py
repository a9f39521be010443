"""Ray node start retries (cluster.local.retry_ray_start), without Ray."""

from __future__ import annotations

import pytest

from cluster.local import retry_ray_start

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


class Starts:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = list(failures)
        self.inits = 0
        self.cleanups = 0

    def init(self) -> None:
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)

    def cleanup(self) -> None:
        self.cleanups += 1


def test_a_start_timeout_is_cleaned_up_and_retried() -> None:
    s = Starts([TIMEOUT])
    retried: list[int] = []
    retry_ray_start(s.init, s.cleanup, attempts=3, on_retry=lambda n, _: retried.append(n))
    assert (s.inits, s.cleanups, retried) == (2, 1, [1])


def test_the_last_timeout_is_raised() -> None:
    s = Starts([TIMEOUT, TIMEOUT, TIMEOUT])
    with pytest.raises(Exception, match="timed out during startup"):
        retry_ray_start(s.init, s.cleanup, attempts=3)
    assert (s.inits, s.cleanups) == (3, 2)


def test_other_errors_are_not_retried() -> None:
    s = Starts([ValueError("bad num_cpus")])
    with pytest.raises(ValueError, match="bad num_cpus"):
        retry_ray_start(s.init, s.cleanup, attempts=3)
    assert (s.inits, s.cleanups) == (1, 0)
