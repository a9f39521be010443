"""Time to ready of `make run`, with RAG off and on, on this machine.

    .venv/bin/python -m bench.start_bench [--rounds 1]

Each start runs `tierline up` as `make run` does, from a fresh working directory (so a
fresh `.tierline/rag/milvus.db` store, and the first-start sample ingestion of docs/):
- `rag_off`: configs/local.yaml with `rag.enabled` and `embeddings.enabled` false (the
  spec before RAG was on);
- `rag_on`: configs/local.yaml as shipped, with `--sample docs`.
Alternating, one start at a time. For each it reads the banner's `ready in Ns` (from the
start of `tierline up` to the warm-up's end, plus the sample ingestion when on) and the
steps' lines, then asks one grounded question (RAG on) and keeps the answer, then stops
the cluster with SIGTERM. Writes bench/results/start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from tierline.cli.local import wait_ports_free
from tierline.cluster.specfile import load_spec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "results" / "start.json"


def spec_file(folder: Path, rag: bool) -> Path:
    from tierline.cluster.specfile import spec_to_data

    spec = load_spec(ROOT / "configs" / "local.yaml")  # paths made absolute
    update = {
        "rag": spec.rag.model_copy(update={"enabled": rag}),
        "embeddings": spec.embeddings.model_copy(update={"enabled": rag}),
    }
    spec = spec.model_copy(update=update)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_to_data(spec), sort_keys=False))
    return path


def one_start(rag: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tierline-start-") as tmp:
        folder = Path(tmp)
        path = spec_file(folder, rag)
        # The previous start's processes may still hold the gateway's ports for a while
        # after it exits; `tierline up` would wait for them inside its Ray step. A start
        # on a fresh machine does not, so the clock starts once they are free.
        spec = load_spec(path)
        ports = range(spec.gateway.port, spec.gateway.port + spec.gateway.replicas)
        wait_ports_free(spec.gateway.host, ports, timeout_s=180)
        cmd = [str(BIN / "tierline"), "up", str(path)]
        if rag:
            cmd += ["--sample", str(ROOT / "docs")]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            start_new_session=True,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        out: dict[str, Any] = {"rag": rag}
        try:
            for line in proc.stdout:
                lines.append(line.rstrip())
                if m := re.match(r"ready in (\d+)s", line.strip()):
                    out["banner_ready_s"] = int(m.group(1))
                    out["seen_ready_s"] = round(time.monotonic() - t0, 1)
                if line.startswith("Ctrl-C stops the cluster."):
                    break
            else:
                raise RuntimeError("tierline up ended:\n" + "\n".join(lines[-30:]))
            out["steps"] = [s for s in lines if s[:1] in "✓✗-"]
            if rag:
                out["grounded_answer"] = ask(lines)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out["banner"] = [s for s in lines if not s.startswith(("✓", "tierline up"))]
        return out


def ask(lines: list[str]) -> dict[str, Any]:
    """The banner's grounded curl, run as printed."""
    i = next(i for i, s in enumerate(lines) if s.startswith("a grounded answer"))
    cmd = lines[i + 1].strip()
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return {"curl": cmd, "answer": json.loads(res.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    runs = []
    for r in range(args.rounds):
        for rag in (False, True):
            run = one_start(rag)
            print(f"round {r + 1}, rag {'on' if rag else 'off'}: ready in {run['banner_ready_s']}s")
            runs.append(run)
    by = {
        k: [r["banner_ready_s"] for r in runs if r["rag"] == (k == "rag_on")]
        for k in ("rag_off", "rag_on")
    }
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "ready_s": by,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(by), f"-> {args.out}")


if __name__ == "__main__":
    main()
