"""Runs for the serving benchmark's unit tests: a real `vllm bench serve` result, a run
maker, and every system's runs with figures that meet each target (`five`)."""

from __future__ import annotations

from typing import Any

from bench import report as rp

# A real `vllm bench serve --save-result --save-detailed` result (tierline, c=1, on this
# repo's tiny-large), with the per-request lists cut to three requests.
REAL: dict[str, Any] = {
    "date": "20261124-023041",
    "backend": "vllm",
    "model_id": "tiny-large",
    "num_prompts": 24,
    "max_concurrency": 1,
    "duration": 19.7282,
    "completed": 24,
    "failed": 0,
    "total_input_tokens": 3088,
    "total_output_tokens": 1536,
    "output_throughput": 77.8583,
    "median_ttft_ms": 98.3672,
    "p50_ttft_ms": 98.3672,
    "p99_ttft_ms": 551.9775,
    "median_tpot_ms": 8.8241,
    "p50_tpot_ms": 8.8241,
    "p99_tpot_ms": 26.857,
    "median_itl_ms": 3.7471,
    "p50_itl_ms": 3.7471,
    "p99_itl_ms": 84.2413,
    "ttfts": [0.083537, 0.05847, 0.060215],
    "itls": [
        [0.132323, 7e-06, 5e-06, 4e-06],
        [0.005687, 0.006747, 0.006733, 0.009306],
        [0.00523, 0.034912, 1.2e-05, 6e-06],
    ],
    "errors": ["", "", ""],
    "generated_texts": ["...", "...", "..."],
}


def run(system: str, c: int, round_: int = 1, **kw: Any) -> rp.Run:
    base: dict[str, Any] = {
        "completed": 10,
        "failed": 0,
        "duration_s": 10.0,
        "output_tokens": 640,
        "output_tok_s": 64.0,
        "ttft_p50_ms": 50.0,
        "ttft_p99_ms": 90.0,
        "itl_p50_ms": 8.0,
        "itl_p99_ms": 20.0,
        "tpot_p50_ms": 8.0,
    }
    base.update(kw)
    return rp.Run(system=system, concurrency=c, round=round_, **base)


# Per-request CPU below: cpu_s is seconds over a run of 10 requests, so 0.1 s = 10 ms/request.
GOOD16: dict[str, dict[str, Any]] = {
    # c=16, one second per run: output tokens = tok/s
    "bare": {"output_tokens": 1000, "cpu_s": {"vllm api server": 0.1, "vllm engine core": 0.4}},
    "serve-llm": {
        "output_tokens": 340,
        "cpu_s": {"ingress replica": 0.2, "LLMServer replica": 0.25, "serve proxy": 0.15},
    },
    "serve-llm-ds": {
        "output_tokens": 700,
        "cpu_s": {
            "LLMServer replica": 0.12,
            "LLMRouter replica": 0.02,
            "haproxy": 0.03,
            "haproxy manager": 0.01,
            "ray other": 0.05,
            "vllm engine core": 0.4,
        },
    },
    "tierline": {
        "output_tokens": 950,
        "cpu_s": {
            "gateway replica": 0.06,
            "tier-large replica": 0.07,
            "serve proxy": 0.01,
            "ray other": 0.2,
            "vllm engine core": 0.4,
        },
    },
    "tierline-auto": {
        "output_tokens": 900,
        "cpu_s": {"gateway replica": 0.07, "tier-small replica": 0.07, "tier-large replica": 0.01},
    },
}
TTFT1 = {
    "bare": 40.0,
    "serve-llm": 70.0,
    "serve-llm-ds": 46.0,
    "tierline": 42.5,
    "tierline-auto": 43.0,
}
FLOOD = {
    "source": "bench/results/flood.json",
    "measured": "2026-12-06",
    "capacity": 12,
    "requests": 160,
    "rounds": 3,
    "time_to_refuse": {"p50_ms": 40.0, "p99_ms": 80.0, "count": 444},
    "target_p99_refuse_ms": 100,
    "target_met": True,
}


def five(
    rounds: int = 3,
    concurrencies: tuple[int, ...] = (1, 16),
    at16: dict[str, dict[str, Any]] | None = None,
    ttft1: dict[str, float] | None = None,
    per_round16: dict[str, list[int]] | None = None,
) -> list[rp.Run]:
    """Every system at every concurrency and round; c=16 as GOOD16 (updated by `at16`),
    c=1 with TTFT p50 as TTFT1 (updated by `ttft1`); `per_round16` gives a system's c=16
    output tokens round by round."""
    spec16 = {s: {**GOOD16[s], **(at16 or {}).get(s, {})} for s in rp.SYSTEMS}
    ttfts = {**TTFT1, **(ttft1 or {})}
    out = []
    for round_ in range(1, rounds + 1):
        for system in rp.SYSTEMS:
            for c in concurrencies:
                if c == 1:
                    out.append(run(system, 1, round_, ttft_p50_ms=ttfts[system]))
                    continue
                kw = dict(spec16[system]) if c == 16 else {"output_tokens": 500}
                if c == 16 and per_round16 and system in per_round16:
                    kw["output_tokens"] = per_round16[system][round_ - 1]
                tokens = kw["output_tokens"]
                out.append(run(system, c, round_, duration_s=1.0, output_tok_s=float(tokens), **kw))
    return out
