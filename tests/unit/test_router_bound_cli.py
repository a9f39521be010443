"""`tierline router eval --max-quality-loss`: its JSON and per-prompt decisions, and the
spec's `router.max_quality_loss` / `router.confidence` validation (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tierline.cli.main import app
from tierline.cluster.specfile import SpecError, load_spec_text
from tierline.router.data import REPO_DATA
from tierline.router.scorer import CALIBRATED_ARTIFACT
from typer.testing import CliRunner

MINIMAL = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 1024
  - name: large
    model_source: org/large
    max_context_tokens: 4096
"""


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 labelled GSM8K and MMLU rows, mixed."""
    rows = []
    for name, k in (("gsm8k", 200), ("mmlu", 400)):
        lines = (REPO_DATA / f"{name}.train.jsonl").read_text().splitlines()
        pick = np.random.default_rng(1).choice(len(lines), k, replace=False)
        rows += [lines[i] for i in sorted(pick)]
    path = tmp_path_factory.mktemp("data") / "mix.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> dict:
    monkeypatch.chdir(tmp_path)  # the embedding cache goes to ./.cache
    out = CliRunner().invoke(
        app, ["router", "eval", "--router", str(CALIBRATED_ARTIFACT), "--json", *args]
    )
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("alpha", [0.15, 0.3])
@pytest.mark.parametrize("share", ["0.5", "0"])
def test_decisions_recompute_the_reported_loss(
    labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alpha: float, share: str
) -> None:
    out = tmp_path / "decisions.jsonl"
    result = _eval(
        tmp_path,
        monkeypatch,
        "--data",
        str(labelled),
        "--max-quality-loss",
        str(alpha),
        "--calibration-share",
        share,
        "--decisions",
        str(out),
    )
    labels = {}
    for line in labelled.read_text().splitlines():
        row = json.loads(line)
        labels[row["id"]] = max(0.0, row["strong_score"] - row["weak_score"])
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert {d["tier"] for d in decisions} <= {"cheap", "strong"}
    assert len(decisions) == result["test_rows"] == (600 if share == "0" else 300)
    assert len({d["id"] for d in decisions}) == len(decisions)
    cheap = [labels[d["id"]] for d in decisions if d["tier"] == "cheap"]
    assert result["cheap_share"] == pytest.approx(len(cheap) / len(decisions), abs=1e-4)
    assert result["realised_loss"] == pytest.approx(np.mean(cheap) if cheap else 0.0, abs=1e-4)
    assert result["max_quality_loss"] == alpha and result["confidence"] == 0.9
    assert result["calibration_upper_bound"] <= alpha
    assert result["bound_calibration"] == ("artifact" if share == "0" else "split")
    assert "apgr" in result  # the routing-quality figures are still there


def test_without_a_loss_the_eval_sweeps(
    labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _eval(tmp_path, monkeypatch, "--data", str(labelled))
    sweep = result["bound_sweep"]
    assert [r["max_quality_loss"] for r in sweep] == sorted(r["max_quality_loss"] for r in sweep)
    shares = [r["calibration_cheap_share"] for r in sweep]
    assert shares == sorted(shares)  # a looser bound never keeps fewer prompts cheap
    assert all(r["calibration_upper_bound"] <= r["max_quality_loss"] for r in sweep)


@pytest.mark.parametrize(
    "args",
    [
        ["--max-quality-loss", "1.5"],
        ["--max-quality-loss", "0.1", "--confidence", "1"],
        ["--decisions", "d.jsonl"],
    ],
)
def test_bad_bound_options_are_refused(
    labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["router", "eval", "--data", str(labelled), *args])
    assert out.exit_code == 2


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        load_spec_text(text, "t.yaml")
    return [str(i) for i in exc.value.issues]


def test_spec_bound_fields() -> None:
    ok = load_spec_text(
        MINIMAL + "router:\n  policy: learned\n  max_quality_loss: 0.1\n  confidence: 0.95\n",
        "t.yaml",
    )
    assert (ok.router.max_quality_loss, ok.router.confidence) == (0.1, 0.95)
    default = load_spec_text(MINIMAL, "t.yaml").router
    assert default.max_quality_loss is None and default.confidence == 0.9


@pytest.mark.parametrize(
    ("router", "needle"),
    [
        ("  max_quality_loss: 0.1\n", "needs policy: learned"),
        ("  policy: learned\n  max_quality_loss: 0\n", "router.max_quality_loss"),
        ("  policy: learned\n  max_quality_loss: 1.2\n", "router.max_quality_loss"),
        ("  policy: learned\n  max_quality_loss: 0.1\n  confidence: 1\n", "router.confidence"),
        (
            "  policy: learned\n  max_quality_loss: 0.1\n  learned:\n    strong_share: 0.3\n",
            "not both",
        ),
    ],
)
def test_spec_bound_errors_name_the_field(router: str, needle: str) -> None:
    errs = _errors(MINIMAL + "router:\n" + router)
    assert any(needle in e for e in errs), errs


def test_the_eval_routes_with_a_bound_per_traffic_class_as_the_gateway_does(
    labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `router eval` calibrated one pooled bound while the gateway routed per
    class, so its realised loss was not the gateway's."""
    result = _eval(
        tmp_path,
        monkeypatch,
        "--data",
        str(labelled),
        "--max-quality-loss",
        "0.2",
        "--calibration-share",
        "0",
    )
    assert result["bound_policy"] == "per_class"
    classes = result["classes"]
    assert set(classes) == {"gsm8k", "mmlu", "out-of-domain"}
    assert sum(c["test_rows"] for c in classes.values()) == result["test_rows"] == 600
    assert sum(c["cheap_rows"] for c in classes.values()) == result["cheap_rows"]
    limits = [c["threshold"] for n, c in classes.items() if n != "out-of-domain"]
    finite = [t for t in limits if t is not None]
    strictest = None if len(finite) < len(limits) else min(finite)
    assert classes["out-of-domain"]["threshold"] == strictest
