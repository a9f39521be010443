"""The benchmark's profile summaries (bench/pyspy.py) and the flood and profile lines of
the generated BENCHMARKS.md section (bench/report_md.py)."""

from __future__ import annotations

from bench.pyspy import package_of, parse_frame, summarise
from bench.report_md import flood_line, profile_md

RAW = "\n".join(
    [
        # outermost frame first, the on-CPU leaf last, then the sample count
        "<module> (ray/_private/workers/default_worker.py:323);"
        "main_loop (ray/_private/worker.py:1069) 4",
        "run (asyncio/events.py:80);__call__ (deployments/gateway/pipeline/middleware.py:72);"
        "app (fastapi/routing.py:382);validate (pydantic/main.py:10) 3",
        "run (asyncio/events.py:80);send (uvicorn/protocols/http/httptools_impl.py:500) 2",
        "run (/usr/lib/python3.11/asyncio/events.py:80);"
        "loads (/x/.venv/lib/python3.11/site-packages/orjson/__init__.py:1) 1",
        "garbage line",
    ]
)


def test_frames_are_read_as_function_and_file() -> None:
    assert parse_frame("send (uvicorn/protocols/http/httptools_impl.py:500)") == (
        "send",
        "uvicorn/protocols/http/httptools_impl.py",
    )
    assert parse_frame("<lambda> (x.py)") == ("<lambda>", "x.py")


def test_files_are_named_by_package() -> None:
    assert package_of("ray/serve/_private/replica.py") == "ray.serve"
    assert package_of("ray/_private/worker.py") == "ray._private"
    assert package_of("deployments/gateway.py") == "tierline.deployments"
    assert package_of("/a/.venv/lib/python3.11/site-packages/vllm/entrypoints/x.py") == "vllm"
    assert package_of("/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/events.py") == (
        "asyncio"
    )
    assert package_of("threading.py") == "threading"
    assert package_of("/somewhere/else.py") == "other"


def test_summary_shares_add_up_per_sample() -> None:
    s = summarise(RAW)
    assert s.samples == 10  # the unreadable line is skipped
    d = s.as_dict()
    assert dict(map(tuple, d["self_by_package"])) == {
        "ray._private": 0.4,
        "pydantic": 0.3,
        "uvicorn": 0.2,
        "orjson": 0.1,
    }
    inclusive = dict(map(tuple, d["inclusive_by_package"]))
    assert inclusive["asyncio"] == 0.6  # on the stack of 6 of the 10 samples
    assert inclusive["tierline.deployments"] == 0.3
    assert d["self_by_function"][0] == ["ray._private: main_loop", 0.4]


def test_flood_line_says_met_or_not_with_its_figures() -> None:
    assert "no `bench/results/flood.json`" in flood_line(None)
    flood = {
        "source": "bench/results/flood.json",
        "measured": "2026-12-03",
        "capacity": 12,
        "requests": 160,
        "rounds": 3,
        "time_to_refuse": {"p50_ms": 90.0, "p99_ms": 140.2, "count": 444},
        "target_p99_refuse_ms": 100,
        "target_met": False,
    }
    line = flood_line(flood)
    assert "p99 time to refuse: 140 ms" in line and "not met" in line
    assert "met" in flood_line({**flood, "target_met": True}).replace("not met", "")


def test_profile_table_has_a_row_per_process() -> None:
    assert profile_md(None) == ""
    profiles = {
        "what": "py-spy",
        "measured_at": "2026-12-03T00:00:00Z",
        "systems": {
            "tierline": {
                "gateway replica": {
                    "cpu_ms_per_request": 30.5,
                    **summarise(RAW).as_dict(),
                }
            },
            "bare": {"vllm api server": {"cpu_ms_per_request": 17.8, "samples": 0}},
        },
    }
    md = profile_md(profiles)
    assert "| tierline | gateway replica | 30.5 | 10 | ray._private 40%" in md
    assert "| bare vLLM | vllm api server | 17.8 | 0 |" in md
