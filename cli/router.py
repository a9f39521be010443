"""`tierline router train|eval`: fit the learned scorer's head, and measure routers offline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from tierline.cluster.embedding import MINILM_NAME
from tierline.cluster.specfile import SpecError, load_spec
from tierline.router.bound import evaluate as bound_eval
from tierline.router.bound import evaluate_classes, prompt_losses
from tierline.router.classes import class_indices
from tierline.router.data import LabelledSet, load_files
from tierline.router.evaluate import (
    RoutingCurve,
    curve,
    length_scores,
    oracle_scores,
    random_summary,
    summary,
)
from tierline.router.head import Head, prompt_words
from tierline.router.static_embedding import STATIC_NAME

app = typer.Typer(help="Train and evaluate the learned router.", no_args_is_help=True)
err = Console(stderr=True)
CACHE = Path(".cache")
DEFAULT_SPEC = Path("configs/local.yaml")


@app.command()
def train(
    data: list[Path] = typer.Option(..., "--data", help="Labelled JSONL files (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Where to write the artifact (.npz)."),
    kind: str = typer.Option("lr", help="Head: lr, mf or mlp."),
    seed: int = typer.Option(0, help="Training seed."),
    embedder_name: str = typer.Option(
        STATIC_NAME, "--embedder", help=f"{STATIC_NAME} (default) or {MINILM_NAME}."
    ),
    calibration_holdout: float = typer.Option(
        0.3,
        min=0.0,
        max=0.9,
        help="Share of each file held out of training and shipped for max_quality_loss.",
    ),
) -> None:
    """Embed the prompts (cached under .cache/), fit the head, save it."""
    from tierline.router.embedders import open_embedder
    from tierline.router.embedding import cached_embeddings, probe
    from tierline.router.train import HeadParams, train_artifact

    sets = [load_files([p]) for p in data]
    with err.status(f"loading {embedder_name} and embedding prompts"):
        try:
            embedder = open_embedder(embedder_name)
        except ValueError as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(1) from None
        embs = [cached_embeddings(embedder, s.prompts, CACHE) for s in sets]
    allset = _concat(sets)
    groups = [p.name.split(".")[0] for p, s in zip(data, sets, strict=True) for _ in s.prompts]
    weak, strong = allset.normalised()
    proto = Head("lr", ("weak", "strong"), np.zeros((1, 2)), np.zeros(2))
    x = proto.features(np.concatenate(embs), np.asarray([prompt_words(p) for p in allset.prompts]))
    with err.status(f"training the {kind} head (5 folds for calibration, then all rows)"):
        head = train_artifact(
            x,
            np.stack([weak, strong], axis=1),
            groups,
            HeadParams(kind=kind),
            seed,
            calibration_holdout=calibration_holdout,
        )
    head = replace(head, embedder=embedder.name, meta={**head.meta, "probe": probe(embedder)})
    head.save(out)
    err.print(
        f"wrote {out} ({out.stat().st_size // 1024} KiB, {kind}, {head.meta['rows']} prompts "
        f"trained on, {head.meta['calibration_rows']} held out for calibration)"
    )


def _concat(sets: list[LabelledSet]) -> LabelledSet:
    return LabelledSet(
        tuple(p for s in sets for p in s.prompts),
        np.concatenate([s.weak for s in sets]),
        np.concatenate([s.strong for s in sets]),
        tuple(x for s in sets for x in s.sources),
    )


def _router_scores(
    data: LabelledSet, artifact: Path | None, spec_path: Path
) -> tuple[str, np.ndarray, Head | None, np.ndarray | None]:
    """Scores of the router under test (an artifact, or the one the spec routes with), its
    head (None for the rules policy), and each prompt's traffic class as an index into
    the head's class names (-1: out of domain; None: a head without classes)."""
    if artifact is None:
        try:
            spec = load_spec(spec_path)
        except SpecError as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(1) from None
        if spec.router.policy == "rules":
            return f"rules ({spec_path})", _rules_scores(data, spec_path), None, None
        from tierline.deployments.gateway.pipeline.routing import artifact_path

        artifact = artifact_path(spec.router.learned)
    from tierline.router.embedders import open_embedder
    from tierline.router.embedding import cached_embeddings
    from tierline.router.train import gap_scores

    head = Head.load(artifact)
    with err.status(f"embedding prompts with {head.embedder}"):
        emb = cached_embeddings(open_embedder(head.embedder), data.prompts, CACHE)
    x = head.features(emb, np.asarray([prompt_words(p) for p in data.prompts]))
    classes = None if head.classes is None else class_indices(head.classes, emb)
    return f"learned ({artifact})", gap_scores(head, x), head, classes


def _rules_scores(data: LabelledSet, spec_path: Path) -> np.ndarray:
    from tierline.cluster.specfile import load_spec as _load
    from tierline.router.rules import RulesPolicy

    p = _load(spec_path).router.params
    policy = RulesPolicy(p.long_prompt_tokens, tuple(p.hard_keywords))
    scores = []
    for prompt in data.prompts:
        words = prompt_words(prompt)
        hard = policy.matched_keyword(prompt) is not None
        scores.append(
            2.0 + words if hard else (1.0 + words if words >= p.long_prompt_tokens else words / 1e6)
        )
    return np.asarray(scores)


SWEEP = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


@app.command("eval")
def evaluate(
    data: Path = typer.Option(..., "--data", help="Labelled JSONL file."),
    router: Path | None = typer.Option(None, "--router", help="Artifact; default: the spec's."),
    spec: Path = typer.Option(DEFAULT_SPEC, "--spec", help="Spec whose router is evaluated."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the PGR curves as a PNG."),
    max_quality_loss: float | None = typer.Option(
        None,
        "--max-quality-loss",
        help="Calibrate the quality-loss bound at this loss and route the test split with it.",
    ),
    confidence: float = typer.Option(0.9, help="The bound's confidence, in (0, 1)."),
    calibration_share: float = typer.Option(
        0.5,
        min=0.0,
        max=0.9,
        help="Share of the file that calibrates the bound (the rest is the test split); 0: "
        "calibrate on the held-out rows shipped in the artifact, as the gateway does, and "
        "test on the whole file.",
    ),
    seed: int = typer.Option(0, help="Seed of the calibration/test split."),
    decisions: Path | None = typer.Option(
        None,
        "--decisions",
        help='With --max-quality-loss: write {"id", "tier": "cheap"|"strong"} per test prompt.',
    ),
) -> None:
    """APGR and CPT(50%/80%) of a router on a labelled file, next to random, the
    prompt-length heuristic and the oracle; the quality-loss bound's realised loss and
    cheap share on a held-out split, for one --max-quality-loss or a sweep."""
    if max_quality_loss is not None and not 0.0 < max_quality_loss < 1.0:
        err.print("[red]--max-quality-loss must be in (0, 1)[/]")
        raise typer.Exit(2)
    if not 0.0 < confidence < 1.0:
        err.print("[red]--confidence must be in (0, 1)[/]")
        raise typer.Exit(2)
    if decisions is not None and max_quality_loss is None:
        err.print("[red]--decisions needs --max-quality-loss[/]")
        raise typer.Exit(2)
    raw = load_files([data])
    weak, strong = raw.normalised()
    name, scores, head, classes = _router_scores(raw, router, spec)
    curves = {
        "router": curve(scores, weak, strong),
        "length": curve(length_scores(raw.prompts), weak, strong),
        "oracle": curve(oracle_scores(weak, strong), weak, strong),
    }
    result: dict[str, object] = {
        "n": len(raw),
        "router": name,
        **summary(curves["router"]),
        "weak_mean": round(float(weak.mean()), 4),
        "strong_mean": round(float(strong.mean()), 4),
        "baselines": {
            "random": random_summary(weak, strong),
            "length": summary(curves["length"]),
            "oracle": summary(curves["oracle"]),
        },
    }
    bound_rows: list[dict[str, object]] = []
    if head is not None:
        cal, test, test_idx = _bound_split(head, scores, weak, strong, calibration_share, seed)
        alphas = SWEEP if max_quality_loss is None else (max_quality_loss,)
        if head.classes is not None and classes is not None:  # as the gateway routes
            cal_classes, test_classes = _class_split(head, classes, calibration_share, seed)
            names = head.classes.names
            runs = [
                evaluate_classes(
                    (*cal, cal_classes), (*test, test_classes), names, a, 1.0 - confidence
                )
                for a in alphas
            ]
            bound_rows = [r for r, _ in runs]
            cheap = runs[0][1]
        else:
            bound_rows = [dict(bound_eval(cal, test, a, 1.0 - confidence)) for a in alphas]
            limit = bound_rows[0]["threshold"]
            cheap = test[0] <= (float("-inf") if limit is None else float(limit))  # type: ignore[arg-type]
        result["bound_calibration"] = "artifact" if calibration_share == 0 else "split"
        result["bound_policy"] = "per_class" if head.classes is not None else "pooled"
        if max_quality_loss is None:
            result["bound_sweep"] = bound_rows
        else:
            result.update(bound_rows[0])
            if decisions is not None:
                _write_decisions(decisions, raw, test_idx, cheap)
    elif max_quality_loss is not None:
        err.print("[red]the quality-loss bound calibrates the learned router's scores[/]")
        raise typer.Exit(2)
    if plot is not None:
        write_plot(plot, curves)
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{data} ({len(raw)} prompts)")
    for col in ("router", "apgr", "apgr_10", "cpt50", "cpt80"):
        table.add_column(col)
    rows = {"router": summary(curves["router"]), **result["baselines"]}  # type: ignore[dict-item]
    for label, figures in rows.items():
        table.add_row(label, *(f"{figures[k]:.3f}" for k in ("apgr", "apgr_10", "cpt50", "cpt80")))
    Console().print(table)
    if bound_rows:
        bt = Table(
            title=f"quality-loss bound at confidence {confidence} ({result['bound_calibration']})"
        )
        for col in ("max loss", "realised loss", "cheap share", "held"):
            bt.add_column(col)
        for r in bound_rows:
            bt.add_row(
                f"{r['max_quality_loss']}",
                f"{r['realised_loss']:.4f}",
                f"{r['cheap_share']:.3f}",
                "yes" if r["held"] else "no",
            )
        Console().print(bt)


Split = tuple[np.ndarray, np.ndarray]


def _bound_split(
    head: Head,
    scores: np.ndarray,
    weak: np.ndarray,
    strong: np.ndarray,
    calibration_share: float,
    seed: int,
) -> tuple[Split, Split, np.ndarray]:
    """(calibration, test) as (scores, losses), and the test rows' indices."""
    losses = prompt_losses(weak, strong)
    everything = np.arange(len(scores))
    if calibration_share == 0:
        if len(head.calibration_probs) == 0:
            err.print("[red]the artifact has no held-out calibration rows[/]")
            raise typer.Exit(2)
        i_w, i_s = head.outputs.index("weak"), head.outputs.index("strong")
        p, y = head.calibration_probs, head.calibration_labels
        cal = (p[:, i_s] - p[:, i_w], prompt_losses(y[:, i_w], y[:, i_s]))
        return cal, (scores, losses), everything
    perm = np.random.default_rng(seed).permutation(len(scores))
    k = round(calibration_share * len(scores))
    c, t = np.sort(perm[:k]), np.sort(perm[k:])
    return (scores[c], losses[c]), (scores[t], losses[t]), t


def _class_split(
    head: Head, classes: np.ndarray, calibration_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The traffic class of each calibration and test row, split as `_bound_split` splits
    the rows (the artifact's rows carry the class the classifier gave them)."""
    if calibration_share == 0:
        return np.asarray(head.calibration_classes), classes
    perm = np.random.default_rng(seed).permutation(len(classes))
    k = round(calibration_share * len(classes))
    return classes[np.sort(perm[:k])], classes[np.sort(perm[k:])]


def _write_decisions(path: Path, raw: LabelledSet, rows: np.ndarray, cheap: np.ndarray) -> None:
    """One line per test row (`rows`, in order), cheap where `cheap` says so."""
    with path.open("w", encoding="utf-8") as f:
        for i, kept in zip(rows, cheap, strict=True):
            tier = "cheap" if kept else "strong"
            f.write(json.dumps({"id": raw.ids[i], "tier": tier}) + "\n")


def write_plot(path: Path, curves: dict[str, RoutingCurve]) -> None:
    """PGR against strong-call share, drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 480, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    top = max(1.2, max(float(c.pgr.max()) for c in curves.values()))
    bottom = min(0.0, min(float(c.pgr.min()) for c in curves.values()))

    def xy(share: float, pgr: float) -> tuple[float, float]:
        return pad + share * (w - 2 * pad), h - pad - (pgr - bottom) / (top - bottom) * (
            h - 2 * pad
        )

    d.rectangle([pad, pad, w - pad, h - pad], outline="black")
    d.line([xy(0, 0), xy(1, 1)], fill=(180, 180, 180))  # random
    colours = {"router": (200, 30, 30), "length": (30, 90, 200), "oracle": (30, 150, 60)}
    for i, (label, c) in enumerate(curves.items()):
        step = max(1, len(c.share) // 400)
        pts = [xy(float(s), float(p)) for s, p in zip(c.share[::step], c.pgr[::step], strict=True)]
        d.line(pts, fill=colours.get(label, (0, 0, 0)), width=2)
        d.text((pad + 8, pad + 8 + 14 * i), f"{label}: APGR {c.apgr:.3f}", fill=colours.get(label))
    d.text((w // 2 - 60, h - pad + 15), "share sent to the strong tier", fill="black")
    d.text((8, pad - 20), "PGR", fill="black")
    img.save(path)
