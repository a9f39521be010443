"""The client side of the serving benchmark: one `vllm bench serve` run (vLLM's own
client, through bench/vllm_cli.py) against a system's URL, its saved result read back."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_client(
    url: str,
    model: str,
    tokenizer: str,
    concurrency: int,
    num_prompts: int,
    args: argparse.Namespace,
    out_file: Path,
    api_key: str | None,
    served_name: str | None = None,
) -> dict[str, Any]:
    """One `vllm bench serve` run; its saved result. `model` is the served name unless
    `served_name` is given, which the requests then carry in their `model` field (the
    tokenizer still comes from `tokenizer`)."""
    argv = [
        sys.executable,
        str(ROOT / "bench" / "vllm_cli.py"),
        "bench",
        "serve",
        "--backend",
        "vllm",
        "--base-url",
        url,
        "--endpoint",
        args.endpoint,
        "--model",
        model,
        "--tokenizer",
        tokenizer,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--ignore-eos",
        "--max-concurrency",
        str(concurrency),
        "--num-prompts",
        str(num_prompts),
        "--num-warmups",
        str(args.num_warmups),
        "--seed",
        str(args.seed),
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(out_file.parent),
        "--result-filename",
        out_file.name,
        "--disable-tqdm",
    ]
    if served_name is not None:
        argv += ["--served-model-name", served_name]
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # vllm bench serve sends it as a Bearer token
    log = out_file.with_suffix(".log")
    with log.open("w") as fh:
        subprocess.run(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)
    data: dict[str, Any] = json.loads(out_file.read_text())
    return data
