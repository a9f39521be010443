"""`tierline profile` against the real local cluster: every tier, pinned by model name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tierline.cli.main import app
from typer.testing import CliRunner

from tests.integration.conftest import API_KEY, ROOT
from tests.integration.local.conftest import Cluster

GSM8K = ROOT / "data" / "routing" / "gsm8k.train.jsonl"
MMLU = ROOT / "data" / "routing" / "mmlu.train.jsonl"
LIMIT = 10  # prompts per file
ARITHMETIC = ROOT / "bench" / "data" / "arithmetic.jsonl"


def test_profile_runs_every_tier_and_writes_json(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    args = ["profile", "--endpoint", cluster.url, "--key", API_KEY, "--limit", str(LIMIT)]
    args += ["--data", str(GSM8K), "--data", str(MMLU), "--data", str(ARITHMETIC)]
    result = CliRunner().invoke(app, [*args, "--max-tokens", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tier profile" in result.output
    prof = json.loads(out.read_text())
    n = 3 * LIMIT
    assert prof["version"] == 1 and prof["prompts"] == n and prof["max_tokens"] == 16
    assert list(prof["tiers"]) == [t.name for t in cluster.spec.tiers]
    for tier in cluster.spec.tiers:
        p = prof["tiers"][tier.name]
        assert (p["requests"], p["errors"]) == (n, 0), p
        assert 0 < p["ttft_p50_s"] <= p["latency_p50_s"]
        assert p["prompt_tokens"] > n and 0 < p["completion_tokens"] <= n * 16
        expected = (
            p["prompt_tokens"] * tier.price_per_1m_input_tokens
            + p["completion_tokens"] * tier.price_per_1m_output_tokens
        ) / 1e6
        assert abs(p["cost_usd"] - expected) < 1e-9
        # Graded on the arithmetic rows; the random-weight models are honest noise.
        assert p["graded"] == LIMIT and 0 <= p["correct"] <= LIMIT
        assert p["label_score"] is not None  # the GSM8K and MMLU rows carry scores
    cheap, top = (prof["tiers"][t.name] for t in (cluster.spec.tiers[0], cluster.spec.tiers[-1]))
    assert (cheap["label_output"], top["label_output"]) == ("weak_score", "strong_score")
    keep = os.environ.get("TIERLINE_PROFILE_OUT")  # e.g. bench/results/profile-local.json
    if keep:
        shutil.copyfile(out, keep)


def test_profile_refuses_an_unknown_tier(cluster: Cluster, tmp_path: Path) -> None:
    args = ["profile", "--endpoint", cluster.url, "--key", API_KEY, "--limit", "1"]
    args += ["--data", str(ARITHMETIC), "--tier", "nope", "--out", str(tmp_path / "p.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown tier" in result.output
    assert not (tmp_path / "p.json").exists()
