"""Tier profiles: what each tier of a live cluster costs, how fast it is, and how well it
answers, measured on a labelled prompt set. Pure: the CLI (`tierline profile`) does the
requests and hands plain records here.

Input rows are the routing data format (data/routing/README.md): `prompt`, `weak_score`,
`strong_score`, optionally `id`, `source` and a reference answer (`reference` or
`answer`). Each prompt goes once to every tier, pinned by model name.

Two quality numbers, kept apart because they mean different things:

- `accuracy` (measured): the share of this tier's answers that match the row's
  reference answer, over the rows that have one (`graded`). Matching: a numeric
  reference must equal the last number in the answer (GSM8K style, commas ignored); a
  single-letter reference (A-E) must equal the first standalone capital letter A-E of
  the answer (multiple choice); any other reference must appear in the answer,
  case-insensitively, with whitespace collapsed. Rows without a reference are not graded.
- `label_score` (from the file, not measured here): the mean score the file's labels give
  to the model this tier stands in for: the cheapest tier reads `weak_score`, the top tier
  `strong_score`, tiers in between interpolate (the learned router's default mapping).
  It says what the labelled reference models reached on these prompts, not this tier.

The JSON profile (`PROFILE_VERSION` 1) is `{"version", "created", "endpoint", "data",
"prompts", "max_tokens", "tiers": {name: TierProfile}}`; `ttft_p50_s` is what the learned
router takes as a tier's time-to-first-token prior (`router.learned.profile`), and the
token rates and cost per 1k requests are for the cost view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_VERSION = 1
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_LETTER = re.compile(r"\b([A-E])\b")


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    weak_score: float | None
    strong_score: float | None
    reference: str | None
    source: str = ""


@dataclass(frozen=True)
class Answer:
    """One prompt's run on one tier, as the CLI measured it."""

    tier: str
    prompt_id: str
    ok: bool
    ttft_s: float | None = None
    total_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    error: str | None = None


@dataclass(frozen=True)
class TierPricing:
    input_per_1m: float
    output_per_1m: float


@dataclass(frozen=True)
class TierProfile:
    requests: int
    errors: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    latency_p50_s: float | None
    latency_p90_s: float | None
    prompt_tokens: int
    completion_tokens: int
    output_tokens_per_s: float | None
    """Completion tokens over the time after the first token, per request, median."""
    cost_usd: float
    cost_per_1k_requests_usd: float
    graded: int
    correct: int
    accuracy: float | None
    label_score: float | None
    label_output: str


def parse_prompts(lines: Sequence[str], origin: str) -> list[Prompt]:
    """Rows of a routing-format JSONL file; a row without a prompt is an error naming it."""
    out: list[Prompt] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{origin}:{n}: not JSON ({err})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{origin}:{n}: a row needs a non-empty 'prompt'")
        ref = row.get("reference", row.get("answer"))
        out.append(
            Prompt(
                id=str(row.get("id", f"{Path(origin).stem}-{n}")),
                prompt=prompt,
                weak_score=_float(row.get("weak_score")),
                strong_score=_float(row.get("strong_score")),
                reference=None if ref is None else str(ref),
                source=str(row.get("source", "")),
            )
        )
    return out


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def is_correct(answer: str, reference: str) -> bool:
    """Does `answer` give `reference`? See the module docstring for the rules."""
    ref = reference.strip().replace(",", "")
    if _NUMBER.fullmatch(ref):
        numbers = _NUMBER.findall(answer.replace(",", ""))
        return bool(numbers) and float(numbers[-1]) == float(ref)
    if re.fullmatch(r"[A-E]", ref.upper()):
        letter = _LETTER.search(answer)
        return letter is not None and letter.group(1) == ref.upper()
    norm = " ".join(ref.lower().split())
    return bool(norm) and norm in " ".join(answer.lower().split())


def label_weights(tiers: Sequence[str]) -> dict[str, float]:
    """Weight of `strong_score` for each tier: 0 for the cheapest, 1 for the top, linear
    in between (a single tier reads `strong_score`)."""
    if len(tiers) == 1:
        return {tiers[0]: 1.0}
    return {t: i / (len(tiers) - 1) for i, t in enumerate(tiers)}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def tier_profile(
    tier: str,
    answers: Sequence[Answer],
    prompts: Mapping[str, Prompt],
    pricing: TierPricing,
    strong_weight: float,
) -> TierProfile:
    ok = [a for a in answers if a.ok]
    ttft = [a.ttft_s for a in ok if a.ttft_s is not None]
    total = [a.total_s for a in ok if a.total_s is not None]
    rates = [
        a.completion_tokens / (a.total_s - a.ttft_s)
        for a in ok
        if a.ttft_s is not None and a.total_s is not None and a.total_s > a.ttft_s
    ]
    p_tokens = sum(a.prompt_tokens for a in ok)
    c_tokens = sum(a.completion_tokens for a in ok)
    cost = (p_tokens * pricing.input_per_1m + c_tokens * pricing.output_per_1m) / 1e6
    graded = [a for a in answers if prompts[a.prompt_id].reference is not None]
    correct = sum(
        1 for a in graded if a.ok and is_correct(a.text, prompts[a.prompt_id].reference or "")
    )
    labels = []
    for a in answers:
        p = prompts[a.prompt_id]
        if p.weak_score is not None and p.strong_score is not None:
            labels.append((1 - strong_weight) * p.weak_score + strong_weight * p.strong_score)
    output = {0.0: "weak_score", 1.0: "strong_score"}.get(strong_weight, f"{strong_weight:.2f}")
    return TierProfile(
        requests=len(answers),
        errors=len(answers) - len(ok),
        ttft_p50_s=_pct(ttft, 50),
        ttft_p90_s=_pct(ttft, 90),
        latency_p50_s=_pct(total, 50),
        latency_p90_s=_pct(total, 90),
        prompt_tokens=p_tokens,
        completion_tokens=c_tokens,
        output_tokens_per_s=_pct(rates, 50),
        cost_usd=round(cost, 8),
        cost_per_1k_requests_usd=round(1000 * cost / len(ok), 6) if ok else 0.0,
        graded=len(graded),
        correct=correct,
        accuracy=round(correct / len(graded), 4) if graded else None,
        label_score=round(float(np.mean(labels)), 4) if labels else None,
        label_output=output,
    )


def build_profile(
    tiers: Sequence[str],
    answers: Sequence[Answer],
    prompts: Sequence[Prompt],
    pricing: Mapping[str, TierPricing],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON profile: `meta` (endpoint, data files, ...) plus one entry per tier,
    `tiers` ordered from cheapest to most capable."""
    by_id = {p.id: p for p in prompts}
    if len(by_id) != len(prompts):
        raise ValueError("prompt ids must be unique")
    weights = label_weights(tiers)
    out: dict[str, Any] = {"version": PROFILE_VERSION, **meta, "prompts": len(prompts)}
    out["tiers"] = {
        t: asdict(
            tier_profile(t, [a for a in answers if a.tier == t], by_id, pricing[t], weights[t])
        )
        for t in tiers
    }
    return out


def load_ttft_priors(path: Path) -> dict[str, float]:
    """Tier -> measured median time to first token, from a profile file."""
    data = json.loads(Path(path).read_text())
    if data.get("version") != PROFILE_VERSION or not isinstance(data.get("tiers"), dict):
        raise ValueError(f"{path}: not a tierline profile (version {PROFILE_VERSION})")
    return {
        name: float(t["ttft_p50_s"])
        for name, t in data["tiers"].items()
        if isinstance(t, dict) and isinstance(t.get("ttft_p50_s"), int | float)
    }
