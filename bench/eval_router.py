"""`make eval`'s router on live outcomes (issues 26 and 28): each question is asked of
every tier by name and of `model: auto`, the answers are checked against the labelled
answer, and the learned router's scores are put against what the tiers really answered.

Two labelled sets, built in different ways, each split into `dev` and `held_out`:
- `knowledge`: hand-written general-knowledge questions (capitals, science, people,
  places) with a one-word or one-name answer that the question does not contain;
- `arithmetic`: sums, differences and products of small numbers, generated from a seed,
  the answer computed, never one of the operands.

Per set and split: each tier's accuracy, the live `auto` answers' accuracy and the share
the gateway sent above the cheapest tier, and, where the cheapest and the most capable
tier differ in accuracy, the quality/cost curve of the shipped head's scores (APGR and the
strong-call share that recovers 50% and 80% of the gap, `router.evaluate`) against
random, the prompt-length heuristic and the oracle. Where the two tiers answer alike the
curve is undefined (no gap to recover) and the summary says so instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.eval_sets import contains

SEED = 2628
TIER_HEADER = "x-tierline-tier"
MAX_TOKENS = 64
"""Room for a short worked answer (SmolLM2 explains a sum before it gives it)."""


@dataclass(frozen=True)
class QAItem:
    question: str
    answer: str


_KNOWLEDGE = (
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"), ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Egypt?", "Cairo"), ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Norway?", "Oslo"), ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Turkey?", "Ankara"), ("What is the capital of Portugal?", "Lisbon"),
    ("What is the capital of Poland?", "Warsaw"), ("What is the capital of Vietnam?", "Hanoi"),
    ("What is the capital of Hungary?", "Budapest"), ("What is the capital of Chile?", "Santiago"),
    ("What is the capital of Greece?", "Athens"), ("What is the capital of Sweden?", "Stockholm"),
    ("Who wrote the play Romeo and Juliet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("Who developed the theory of general relativity?", "Einstein"),
    ("Who wrote the novel Pride and Prejudice?", "Austen"),
    ("Who proposed the theory of evolution by natural selection?", "Darwin"),
    ("Who was the first person to walk on the Moon?", "Armstrong"),
    ("What is the chemical symbol for gold?", "Au"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("Which gas do plants absorb from the air to make sugar?", "carbon dioxide"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("Which language is mainly spoken in Brazil?", "Portuguese"),
    ("What is the currency of Japan?", "yen"),
    ("What is the hardest natural mineral?", "diamond"),
    ("Which element has the chemical symbol O?", "oxygen"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("Which organ pumps blood through the human body?", "heart"),
    ("How many continents are there on Earth?", "seven"),
    ("Which metal is liquid at room temperature?", "mercury"),
    ("What is the closest star to Earth?", "Sun"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the main ingredient of guacamole?", "avocado"),
    ("In which city is the Eiffel Tower?", "Paris"),
    ("Which country has the largest population in South America?", "Brazil"),
    ("Which instrument has 88 keys?", "piano"),
)  # fmt: skip


def knowledge() -> list[QAItem]:
    """The hand-written questions, in a fixed shuffled order (so a split mixes kinds)."""
    items = [QAItem(q, a) for q, a in _KNOWLEDGE]
    random.Random(SEED).shuffle(items)
    return items


def arithmetic(n: int = 30, seed: int = SEED) -> list[QAItem]:
    """Sums, differences and products whose answer is none of the operands (an answer that
    restates the question must not count as right)."""
    rng = random.Random(seed + 1)
    out: list[QAItem] = []
    while len(out) < n:
        kind = len(out) % 3
        if kind == 0:
            a, b = rng.randint(11, 49), rng.randint(11, 49)
            q, v = f"What is {a} plus {b}?", a + b
        elif kind == 1:
            a, b = rng.randint(50, 99), rng.randint(11, 49)
            q, v = f"What is {a} minus {b}?", a - b
        else:
            a, b = rng.randint(3, 9), rng.randint(3, 12)
            q, v = f"What is {a} times {b}?", a * b
        if str(v) not in (str(a), str(b)):
            out.append(QAItem(q, str(v)))
    return out


def routing_sets() -> dict[str, dict[str, list[QAItem]]]:
    """Each set split into `dev` (its first third) and `held_out` (the rest)."""
    sets = {"knowledge": knowledge(), "arithmetic": arithmetic()}
    return {
        name: {"dev": s[: len(s) // 3], "held_out": s[len(s) // 3 :]} for name, s in sets.items()
    }


# -- the live part ---------------------------------------------------------------------------
async def ask(client: Any, model: str, question: str) -> tuple[str, str | None]:
    """The answer text and the tier that served it (the gateway's tier header)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    reply = raw.parse()
    return (reply.choices[0].message.content or ""), raw.headers.get(TIER_HEADER)


async def outcome(client: Any, item: QAItem, tiers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One question asked of every tier (`(tier, model name)` pairs) and of `auto`."""
    right, texts = {}, {}
    for tier, model in tiers:
        text, _ = await ask(client, model, item.question)
        right[tier] = contains(text, item.answer)
        texts[tier] = text[:120]
    text, served = await ask(client, "auto", item.question)
    return {
        "question": item.question,
        "answer": item.answer,
        "right": right,
        "auto_tier": served,
        "auto_right": contains(text, item.answer),
        "auto_text": text[:120],
        "texts": texts,
    }


# -- pure summary ----------------------------------------------------------------------------
def auto_differs(row: dict[str, Any]) -> bool:
    """`auto` was right otherwise than the tier it was served by, asked by name."""
    tier = row["auto_tier"]
    return tier in row["right"] and row["auto_right"] != row["right"][tier]


def summarize(
    rows: Sequence[dict[str, Any]], tiers: Sequence[str], scores: np.ndarray
) -> dict[str, Any]:
    """Per-tier and live `auto` accuracy of one set's rows; with a gap between the cheapest
    and the most capable tier, the curve of `scores` (higher: more worth the strong tier)
    next to random, length and oracle routing."""
    from tierline.router.evaluate import curve, length_scores, oracle_scores, random_summary
    from tierline.router.evaluate import summary as curve_summary

    n = len(rows)
    weak_name, strong_name = tiers[0], tiers[-1]
    weak = np.asarray([float(r["right"][weak_name]) for r in rows])
    strong = np.asarray([float(r["right"][strong_name]) for r in rows])
    out: dict[str, Any] = {
        "n": n,
        "accuracy": {t: round(float(np.mean([r["right"][t] for r in rows])), 3) for t in tiers},
        "auto": {
            "accuracy": round(float(np.mean([r["auto_right"] for r in rows])), 3),
            "above_cheapest_share": round(
                float(np.mean([r["auto_tier"] not in (None, weak_name) for r in rows])), 3
            ),
        },
        "always_cheapest": round(float(weak.mean()), 3),
        "always_strongest": round(float(strong.mean()), 3),
        "gap": round(float(strong.mean() - weak.mean()), 3),
        "disagree": int(np.sum(weak != strong)),
        "auto_differs": sum(auto_differs(r) for r in rows),
    }
    if abs(strong.mean() - weak.mean()) * n < 1:  # not one answer's worth of gap
        out["curve"] = None
        out["why_no_curve"] = (
            f"{weak_name} and {strong_name} are right on the same share of questions: "
            "there is no quality gap for routing to recover"
        )
        return out
    prompts = [r["question"] for r in rows]
    out["curve"] = {
        "router": curve_summary(curve(scores, weak, strong)),
        "random": random_summary(weak, strong),
        "length": curve_summary(curve(length_scores(prompts), weak, strong)),
        "oracle": curve_summary(curve(oracle_scores(weak, strong), weak, strong)),
    }
    return out


def notable(rows: Sequence[dict[str, Any]], limit: int = 5) -> list[dict[str, Any]]:
    """The rows worth reading: `auto` answering otherwise than its tier asked by name
    first, then questions some tier got wrong."""
    keys = ("question", "answer", "right", "auto_tier", "auto_right", "auto_text", "texts")
    differs = [r for r in rows if auto_differs(r)]
    wrong = [r for r in rows if r not in differs and not all(r["right"].values())]
    return [{k: r[k] for k in keys} for r in (differs + wrong)[:limit]]


def head_scorer(spec: Any) -> Callable[[Sequence[str]], np.ndarray]:
    """The gateway's learned head's routing score per prompt (strong minus weak predicted
    quality), from the same artifact and embedder the gateway loads (loaded once)."""
    from tierline.deployments.gateway.pipeline.routing import artifact_path
    from tierline.router.embedders import open_embedder
    from tierline.router.head import Head
    from tierline.router.train import gap_scores

    head = Head.load(artifact_path(spec.router.learned, spec.router.max_quality_loss is not None))
    embedder = open_embedder(head.embedder, threads=1)

    def scores(prompts: Sequence[str]) -> np.ndarray:
        emb = embedder.embed(list(prompts))
        return gap_scores(head, head.features(emb, np.asarray([len(p.split()) for p in prompts])))

    return scores
