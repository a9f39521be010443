"""Side-by-side serving benchmark, vLLM's own client (`vllm bench serve`) against five
systems on the same model and engine arguments. `make bench` runs it (3 rounds, py-spy
pass); see BENCHMARKS.md.

    .venv/bin/python -m bench.serve_bench [--spec configs/bench.yaml]
        [--auto-spec configs/bench-auto.yaml] [--rounds 3] [--concurrencies 1,16,64]
        [--num-prompts 64,160,320] [--systems bare,serve-llm,serve-llm-ds,tierline,...]

Systems: `bare` (`vllm serve`), `serve-llm` (Ray Serve LLM's own OpenAI app,
bench/serve_llm_server.py), `serve-llm-ds` (the same app in Ray Serve LLM's
direct-streaming mode: HAProxy -> the LLMServer replica's own vLLM app), `tierline` (the
spec's tier behind tierline's gateway, the client naming the tier's model) and
`tierline-auto` (the auto spec's two tiers, the client sending `model: auto`). Each round
starts each system in turn (A B C D E A B C D E ...), runs every concurrency against it,
stops it and everything it started; never two at once.

Writes bench/results/latest.json (the headline ratios, `ratios` per comparison and
concurrency with per-round ratios and their spread, `vs_bare`, `serving_cpu_ms`,
`targets` of issue 25 each measured and met or not, per-system figures, CPU per request,
machine, versions, every round's numbers), bench/results/latest.png and the generated
section of BENCHMARKS.md (only when every system ran at the targets' concurrencies);
router and RAG latency and the flood come from their own result files (not re-run here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report as rp
from bench import report_md
from bench.pyspy import Recorder
from bench.serve_client import run_client
from bench.serve_meta import RESULTS, machine, other_benchmarks, versions
from bench.servers import BareVllm, ServeLlm, Tierline, bare_vllm_args, free_port

ROOT = Path(__file__).resolve().parents[1]
PROFILE = RESULTS / "profile.json"
DEFAULT_CONCURRENCIES = (1, 16, 64)
# Prompts per run at each default concurrency: enough waves of the concurrency that the
# run is mostly steady state, few enough that a round of five systems stays in minutes.
DEFAULT_NUM_PROMPTS = {1: 64, 16: 160, 64: 320}
_SAVED_RUN = re.compile(r"^(?P<system>.+)-r(?P<round>\d+)-c(?P<c>\d+)$")


def profiled(role: str) -> bool:
    """The Python processes a system puts in front of vLLM's engine: bare vLLM's API
    server, the Serve replicas (Ray Serve LLM's ingress or LLMRouter and LLMServer;
    tierline's gateway and engines) and HAProxy's manager actor."""
    return role in ("vllm api server", "haproxy manager") or role.endswith(" replica")


def int_list(text: str) -> list[int]:
    """`"1,16,64"` -> `[1, 16, 64]` (argparse type): positive, no repeats."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from err
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"want distinct positive integers, got {text!r}")
    return values


def system_list(text: str) -> list[str]:
    """`"bare,tierline"` -> those systems in the benchmark's order (argparse type)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in rp.SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {unknown or text!r}; choose from {','.join(rp.SYSTEMS)}"
        )
    return [s for s in rp.SYSTEMS if s in names]


def prompts_per_concurrency(concurrencies: list[int], counts: list[int] | None) -> dict[int, int]:
    """`{concurrency: prompts}`: `counts` in the same order, else the defaults (ten waves
    of the concurrency, at least 64, for one that has no default)."""
    if counts is None:
        return {c: DEFAULT_NUM_PROMPTS.get(c, max(64, 10 * c)) for c in concurrencies}
    if len(counts) != len(concurrencies):
        raise SystemExit(
            f"--num-prompts has {len(counts)} counts for {len(concurrencies)} concurrencies"
        )
    return dict(zip(concurrencies, counts, strict=True))


def order_text(systems: list[str], rounds: int) -> str:
    """`A B C A B C (bare vLLM, ...)`: which system ran when."""
    letters = [chr(ord("A") + i) for i in range(len(systems))]
    return (
        " ".join(letters * rounds)
        + " ("
        + ", ".join(f"{x}: {rp.SYSTEM_LABELS[s]}" for x, s in zip(letters, systems, strict=True))
        + ")"
    )


def load_runs(folder: Path) -> list[rp.Run]:
    """Runs saved by an earlier benchmark: `{system}-r{round}-c{c}.json` (+ `.cpu.json`)."""
    runs = []
    for path in sorted(folder.glob("*-r*-c*.json")):
        m = _SAVED_RUN.match(path.stem)
        if path.name.endswith(".cpu.json") or m is None:
            continue
        cpu_path = path.with_suffix(".cpu.json")
        cpu = json.loads(cpu_path.read_text()) if cpu_path.exists() else None
        data = json.loads(path.read_text())
        runs.append(rp.parse_vllm_result(data, m["system"], int(m["round"]), cpu))
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
    if system in ("serve-llm", "serve-llm-ds"):
        return ServeLlm(args.spec, tier.name, port, log, direct_streaming=system == "serve-llm-ds")
    spec = args.auto_spec if system == "tierline-auto" else args.spec
    return Tierline(spec, port, keys, log, _env_pairs(args.tierline_env))


def _client(
    system: str,
    server: Any,
    tier: Any,
    c: int,
    n: int,
    args: argparse.Namespace,
    out: Path,
    api_key: str,
) -> dict[str, Any]:
    """`vllm bench serve` against `system`: tierline's systems with the API key, and
    `tierline-auto` naming `auto` as the model (the checkpoint's tokenizer either way)."""
    return run_client(
        server.url,
        tier.model_name,
        str(tier.model_source),
        c,
        n,
        args,
        out,
        api_key if system in rp.TIERLINE_SYSTEMS else None,
        served_name="auto" if system == "tierline-auto" else None,
    )


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
    Python process (`profiled`); not pooled with the measured rounds, since sampling takes
    CPU from the same two cores. Native serving processes (HAProxy) get their CPU and a
    note: py-spy has nothing to sample there.
    `{"what", "measured_at", "systems": {system: {role: ...}}}`."""
    c, n = args.high_concurrency, args.prompts[args.high_concurrency]
    out: dict[str, Any] = {
        "what": f"py-spy record (100 Hz, the thread holding the GIL) of each serving process over "
        f"one `vllm bench serve` run at c={c} ({n} prompts), after the measured rounds; shares "
        "are of the process's samples holding the GIL (its Python work): the leaf frame's "
        "package (self) and every package on the stack (inclusive)",
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
            roles: dict[str, int] = {}
            native: set[str] = set()
            for pid, (cmdline, _) in before.items():
                role = rp.process_role(cmdline)
                if role in rp.NATIVE_ROLES:
                    native.add(role)
                elif profiled(role) and recorder.start(role, pid):
                    roles[role] = pid
            result = work / f"{system}-profile-c{c}.json"
            data = _client(system, server, tier, c, n, args, result, api_key)
            summaries = recorder.stop()
            cpu = rp.cpu_by_role(before, server.cpu_sample())
            done = max(int(data.get("completed", n)), 1)
            by_role: dict[str, Any] = {
                role: {
                    "cpu_ms_per_request": round(1000 * cpu.get(role, 0.0) / done, 2),
                    **summaries.get(role, {"samples": 0}),
                }
                for role in roles
            }
            for role in sorted(native):
                by_role[role] = {
                    "cpu_ms_per_request": round(1000 * cpu.get(role, 0.0) / done, 2),
                    "samples": 0,
                    "native": True,
                }
            if not roles or not summaries:
                by_role["note"] = "py-spy missing or failed: see the work folder"
            out["systems"][system] = by_role
        finally:
            server.stop()
    return out


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=ROOT / "configs" / "bench.yaml")
    parser.add_argument(
        "--auto-spec",
        type=Path,
        default=ROOT / "configs" / "bench-auto.yaml",
        help="the spec of `tierline-auto` (two tiers of the --spec tier's checkpoint)",
    )
    parser.add_argument("--tier", default=None, help="tier to benchmark (default: the first)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--systems",
        type=system_list,
        default=list(rp.SYSTEMS),
        help=f"comma-separated, from {','.join(rp.SYSTEMS)} (default: all, in that order)",
    )
    parser.add_argument("--only", choices=rp.SYSTEMS, default=None, help="same as --systems X")
    parser.add_argument(
        "--concurrencies",
        type=int_list,
        default=list(DEFAULT_CONCURRENCIES),
        help="comma-separated client concurrencies, each run against every system",
    )
    parser.add_argument(
        "--num-prompts",
        type=int_list,
        default=None,
        help="comma-separated prompts per run, one per concurrency "
        f"(default {','.join(str(DEFAULT_NUM_PROMPTS[c]) for c in DEFAULT_CONCURRENCIES)} "
        "for 1,16,64; ten waves for any other concurrency)",
    )
    parser.add_argument(
        "--low-concurrency", type=int, default=1, help="where the TTFT target is read"
    )
    parser.add_argument(
        "--high-concurrency",
        type=int,
        default=16,
        help="where the throughput and CPU targets are read (and the py-spy pass runs)",
    )
    parser.add_argument("--num-warmups", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--endpoint", default="/v1/completions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--tierline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="(experiments) environment of the tierline clusters, e.g. a RAY_SERVE_* setting",
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
    if args.only:
        args.systems = [args.only]
    for name in ("low_concurrency", "high_concurrency"):
        if getattr(args, name) not in args.concurrencies:
            parser.error(f"--{name.replace('_', '-')} must be one of --concurrencies")
    args.prompts = prompts_per_concurrency(args.concurrencies, args.num_prompts)
    return args


def _check_auto_spec(args: argparse.Namespace, tier: Any) -> None:
    """`tierline-auto` must serve the checkpoint the client's tokenizer and the other
    systems use, so that routing is the only difference."""
    from tierline.cluster.specfile import load_spec

    auto = load_spec(args.auto_spec)
    sources = {str(Path(t.model_source).resolve()) for t in auto.tiers}
    if len(auto.tiers) < 2 or sources != {str(Path(tier.model_source).resolve())}:
        raise SystemExit(
            f"{args.auto_spec}: tierline-auto wants two or more tiers, all of "
            f"{tier.model_source}; it has {sorted(sources)}"
        )


def _from_dir(args: argparse.Namespace) -> list[rp.Run]:
    """The runs of an earlier benchmark's work folder; sets what the report says of them."""
    runs = load_runs(args.from_dir)
    args.systems = [s for s in rp.SYSTEMS if s in {r.system for r in runs}]
    args.rounds = max(r.round for r in runs)
    args.concurrencies = sorted({r.concurrency for r in runs})
    args.prompts = {
        c: max(r.completed + r.failed for r in runs if r.concurrency == c)
        for c in args.concurrencies
    }
    rebuilt = f"report rebuilt from {args.from_dir}; load averages are at report time"
    args.note = f"{args.note}; {rebuilt}" if args.note else rebuilt
    return runs


def _rounds(
    args: argparse.Namespace, tier: Any, work: Path, keys_file: Path, api_key: str, t0: float
) -> list[rp.Run]:
    runs: list[rp.Run] = []
    for round_ in range(1, args.rounds + 1):
        for system in args.systems:
            log = work / f"{system}-r{round_}.server.log"
            server = _server(system, tier, args, free_port(), log, keys_file)
            print(f"[{time.monotonic() - t0:5.0f}s] round {round_}: starting {system}", flush=True)
            try:
                server.start()
                for c in args.concurrencies:
                    out = work / f"{system}-r{round_}-c{c}.json"
                    load = os.getloadavg()[0]
                    cpu_before = server.cpu_sample()
                    data = _client(system, server, tier, c, args.prompts[c], args, out, api_key)
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
    return runs


def _relative(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def workload(args: argparse.Namespace, tier: Any) -> dict[str, Any]:
    return {
        "client": "vllm bench serve",
        "dataset": "random",
        "endpoint": args.endpoint,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "ignore_eos": True,
        "concurrencies": list(args.concurrencies),
        "num_prompts": ", ".join(f"{n} at c={c}" for c, n in sorted(args.prompts.items())),
        "num_warmups": args.num_warmups,
        "low_concurrency": args.low_concurrency,
        "high_concurrency": args.high_concurrency,
        "rounds": args.rounds,
        "systems": list(args.systems),
        "order": order_text(args.systems, args.rounds),
        "model": tier.model_name,
        "spec": _relative(args.spec),
        "auto_spec": _relative(args.auto_spec),
        "engine_args": " ".join(bare_vllm_args(tier)[1:])
        + "".join(f", {k}={v}" for k, v in tier.env_vars.items()),
    }


def main() -> None:
    args = _parse_args()

    from tierline.cluster.specfile import load_spec
    from tierline.deployments.gateway.pipeline.auth import add_key

    spec = load_spec(args.spec)
    tier = spec.tiers[0] if args.tier is None else spec.tier(args.tier)
    if len(spec.tiers) != 1:
        print(f"note: {args.spec} has {len(spec.tiers)} tiers; benchmarking {tier.name!r}")
    if "tierline-auto" in args.systems and args.from_dir is None:
        _check_auto_spec(args, tier)
    work = Path(tempfile.mkdtemp(prefix="tierline-bench-"))
    print(f"work folder (server logs, saved results): {work}", flush=True)
    keys_file = work / "keys.json"
    api_key = add_key(keys_file, "bench")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    if args.from_dir is not None:  # only the report, from an earlier run's saved results
        runs = _from_dir(args)
    else:
        runs = _rounds(args, tier, work, keys_file, api_key, t0)
    profiles: dict[str, Any] = {}
    if args.profile and args.from_dir is None:
        profiles = profile_pass(args.systems, tier, args, work, keys_file, api_key, t0)
        profile_out = args.out.with_name("profile.json")
        profile_out.write_text(json.dumps(profiles, indent=1) + "\n")
        print(f"wrote {profile_out}")
    elif PROFILE.exists():
        profiles = json.loads(PROFILE.read_text())
    others = other_benchmarks()
    stats = rp.aggregate(runs)
    report: dict[str, Any] = rp.headline(
        runs, args.low_concurrency, args.high_concurrency, flood=others.get("flood")
    )
    report["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report["systems"] = {
        system: {str(c): s.as_dict() for c, s in by_c.items()} for system, by_c in stats.items()
    }
    report["workload"] = workload(args, tier)
    report["machine"] = machine(load_before, args.note)
    if args.tierline_env:
        report["tierline_env"] = _env_pairs(args.tierline_env)
    report["versions"] = versions()
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["cpu_ms_per_request"] = {
        system: {str(c): per for c, per in by_c.items()}
        for system, by_c in rp.cpu_per_request(runs).items()
    }
    report["rounds"] = [r.summary() for r in runs]
    report["other_benchmarks"] = others
    if profiles:
        report["profiles"] = profiles
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    for name, t in report["targets"].items():
        print(f"  target {name}: {t['value']} (target {t['target']}): {t['met']}")
    complete = all(
        c in stats.get(system, {})
        for system in rp.SYSTEMS
        for c in (args.low_concurrency, args.high_concurrency)
    )
    if not complete:  # some systems only: latest.json, but not the published section
        print("not every system ran at the targets' concurrencies: no report section, no plot")
        return
    png = args.out.with_suffix(".png")
    report_md.plot(
        stats,
        png,
        f"bare vLLM vs Ray Serve LLM (default, direct streaming) vs tierline (tier, auto), "
        f"{tier.model_name}, {report['date']} (load before {load_before[0]:.1f})",
    )
    print(f"wrote {png}")
    section = report_md.report_md(report, runs)
    old = args.markdown.read_text() if args.markdown.exists() else "# Benchmarks\n"
    args.markdown.write_text(report_md.splice(old, section))
    print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
