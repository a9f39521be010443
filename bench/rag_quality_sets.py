"""Builds the generated labelled retrieval sets of `bench.rag_quality` (the output ships).

    .venv/bin/python -m bench.rag_quality_sets      # rewrites bench/data/rag_quality/<corpus>/

No network and no outside text: everything comes from the seeds and templates below and
in `bench.rag_handbook_seeds`, with a fixed random seed, so a rerun writes the same files.
Each corpus is its own collection; each question names its set, split and document.

- `handbook` corpus, 59 made-up staff policy paragraphs (one chunk each):
  - `policy`: two questions per paragraph written in other words (what dense finds);
  - `multi`: multi-sentence questions, one of those questions behind one or two sentences
    of situation that name other policies' topics (noise for BM25, some for dense).
- `catalog` corpus, 240 made-up product cards (maker, city, year, weight, support
  reference): `catalog` fact look-ups by product name or reference (what BM25 finds;
  the cards share their wording, so embeddings blur them).
- `codes` corpus, 200 reference entries for error codes and configuration keys whose
  descriptions repeat across entries: `codes` look-ups by the code or key alone.

Splits are by document (a hash of set and id): `tune` (60%) for every decision,
`held_out` (40%) for the report only. In `catalog` and `codes` the held-out questions are
also worded from other templates than the tune ones, so a rule tuned on one wording is
tested on another.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from bench.rag_handbook_seeds import POLICIES

OUT = Path(__file__).resolve().parent / "data" / "rag_quality"
SEED = 26


def split_of(set_name: str, doc_id: str) -> str:
    h = int(hashlib.sha256(f"{set_name}:{doc_id}".encode()).hexdigest()[:8], 16)
    return "held_out" if h % 10 < 4 else "tune"


def question(
    set_name: str, kind: str, doc_id: str, text: str, split: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "set": set_name,
        "kind": kind,
        "split": split or split_of(set_name, doc_id),
        "question": text,
        "document_id": doc_id,
        **extra,
    }


# ---- handbook: paraphrased policy questions, and multi-sentence ones ---------------------

SITUATIONS = [
    "I started last month in the finance team and I'm still finding my way around.",
    "My manager is on holiday this week and the intranet search was no help.",
    "We just moved into the new building and a lot of things changed at once.",
    "I'm asking for a colleague who works part of the week and travels a lot.",
    "Our department had a reorganisation and the old guidance is gone.",
    "I've been at the company for years but never had to deal with this before.",
    "I tried asking on the team chat about laptops, parking and expenses, nobody knew.",
    "It's a bit urgent because I have a client meeting and a trip coming up.",
    "HR pointed me to the handbook, but it's long and I couldn't find the right part.",
    "Sorry if this is a basic question about the office rules.",
]


def handbook(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    corpus = [
        {"id": doc_id, "title": doc_id.replace("-", " "), "text": text}
        for doc_id, text, _ in POLICIES
    ]
    questions = []
    for doc_id, _, asks in POLICIES:
        split = split_of("policy", doc_id)
        for q in asks:
            questions.append(question("policy", "paraphrase", doc_id, q, split))
        # One situation sentence or two, then one of the two questions, sometimes a
        # closing line: several sentences, most of them not about the policy.
        lead = rng.sample(SITUATIONS, rng.choice((1, 2)))
        tail = rng.choice(["", " Thanks in advance.", " Any pointer is welcome."])
        text = " ".join([*lead, rng.choice(asks)]) + tail
        questions.append(question("multi", "multi_sentence", doc_id, text, split))
    return corpus, questions


# ---- catalog: fact look-ups on made-up product cards ------------------------------------

SYL = "ar bel cor dax el fin gor hal ix jun kel lor mav nor ost pir quin ros sal tor ul vey wex"
CATEGORIES = [
    "a centrifugal pump",
    "a gear pump",
    "an air compressor",
    "a heat exchanger",
    "a pressure valve",
    "a flow meter",
    "an industrial mixer",
    "a conveyor drive",
]
CITIES = "Aldmere Brisholt Caverly Dunmark Eskridge Fallowby Garnock Hesketh Ivelport Jorvale"
CARD = [
    "The {name} is {category} built by {maker} in {city} since {year}. It weighs {kg} kg "
    "and is rated for {rating}. Service requests quote the support reference {ref}.",
    "{maker} has manufactured the {name}, {category}, at its {city} plant since {year}. "
    "Rated for {rating} and weighing {kg} kg, it is supported under reference {ref}.",
    "Support reference {ref} covers the {name}: {category} weighing {kg} kg, rated for "
    "{rating}, made by {maker} in {city} from {year} on.",
]
BOILERPLATE = (
    "Spare parts are shipped within five working days. Installation must follow the safety "
    "sheet supplied with the unit, and the warranty lapses if seals are replaced with "
    "parts from other suppliers."
)
CATALOG_TUNE = [
    ("maker", "Who manufactures the {name}?"),
    ("weight", "How heavy is the {name}?"),
    ("city", "Where is the {name} made?"),
    ("by_ref", "Which product has support reference {ref}?"),
]
CATALOG_HELD = [
    ("maker", "Which company builds the {name}?"),
    ("weight", "What does the {name} weigh in kilograms?"),
    ("year", "Since which year has the {name} been produced?"),
    ("by_ref", "Support ticket mentions reference {ref}: what equipment is that?"),
]


def word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SYL.split()) for _ in range(n)).capitalize()


def catalog(rng: random.Random, n: int = 240) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    corpus, questions, names = [], [], set()
    makers = [
        f"{word(rng, 2)} {rng.choice(['Werke', 'Industries', 'AG', 'Ltd'])}" for _ in range(30)
    ]
    for i in range(n):
        while (name := f"{word(rng, 2)} {rng.choice('ABCDKMPRSTVX')}{rng.randint(2, 90)}") in names:
            pass
        names.add(name)
        category = rng.choice(CATEGORIES)
        fact = {
            "name": name,
            "category": category,
            "maker": rng.choice(makers),
            "city": rng.choice(CITIES.split()),
            "year": str(rng.randint(1962, 2021)),
            "kg": str(rng.randint(12, 2400)),
            "rating": rng.choice(["16 bar", "25 bar", "40 bar", "6 kW", "11 kW", "90 m3/h"]),
            "ref": f"SR-{rng.randint(10000, 99999)}",
        }
        doc_id = f"card-{i:03d}"
        text = rng.choice(CARD).format(**fact) + " " + BOILERPLATE
        corpus.append({"id": doc_id, "title": name, "text": text})
        split = split_of("catalog", doc_id)
        kind, template = rng.choice(CATALOG_TUNE if split == "tune" else CATALOG_HELD)
        answer = fact["name"] if kind == "by_ref" else fact[{"weight": "kg"}.get(kind, kind)]
        q = template.format(**fact)
        questions.append(question("catalog", kind, doc_id, q, split, answer=answer))
    return corpus, questions


# ---- codes: look-ups by error code or configuration key ---------------------------------

PROBLEMS = [
    (
        "the upstream replica did not answer before the deadline",
        "raise the timeout or add replicas",
    ),
    ("the request body was larger than the configured limit", "send a smaller body"),
    ("the API key was missing or not recognised", "check the key in the Authorization header"),
    ("the tenant ran out of its token quota for the minute", "wait for the window to reset"),
    ("the model named in the request is not served", "list the served models first"),
    ("the vector store refused the write", "check the store's disk space and retry"),
    ("the prompt did not fit the context window of any tier", "shorten the prompt"),
    ("the health check of the engine failed three times", "read the engine's log for the cause"),
]
SUBSYSTEMS = [
    "gateway",
    "router",
    "engine",
    "store",
    "ingest",
    "embed",
    "quota",
    "scheduler",
    "auth",
    "cache",
]
KEY_WORDS = [
    "max",
    "min",
    "default",
    "idle",
    "batch",
    "flush",
    "retry",
    "backoff",
    "queue",
    "window",
    "pool",
    "drain",
]
KEY_UNITS = ["_s", "_ms", "_bytes", "_requests", "_tokens", ""]
CODES_TUNE = {
    "error": ["What does error {code} mean?", "How do I fix {code}?"],
    "key": ["What is the default of {key}?", "What does the setting {key} control?"],
}
CODES_HELD = {
    "error": ["I'm seeing {code} in the logs, what went wrong?", "{code} came back, what now?"],
    "key": ["{key}: what happens if I leave it unset?", "Explain the {key} option."],
}
ENTRY = {
    "error": "Error {code} is returned when {problem}. To resolve it, {fix}. The gateway logs "
    "the request id next to the code, and the same condition is counted in the metrics.",
    "key": "The option {key} sets the {what} of the {sub} in {unit_word}; the default is "
    "{default}. Changing it needs a restart of the {sub} replicas, and a value of zero "
    "turns the limit off.",
}


def codes(rng: random.Random, n: int = 200) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    corpus, questions, seen = [], [], set()
    for i in range(n):
        doc_id = f"ref-{i:03d}"
        split = split_of("codes", doc_id)
        templates = CODES_TUNE if split == "tune" else CODES_HELD
        if i % 2 == 0:
            while (code := f"TL-E{rng.randint(1000, 9999)}") in seen:
                pass
            seen.add(code)
            problem, fix = rng.choice(PROBLEMS)
            text = ENTRY["error"].format(code=code, problem=problem, fix=fix)
            q = rng.choice(templates["error"]).format(code=code)
            corpus.append({"id": doc_id, "title": code, "text": text})
            questions.append(question("codes", "error_code", doc_id, q, split, answer=code))
        else:
            while True:
                sub = rng.choice(SUBSYSTEMS)
                unit = rng.choice(KEY_UNITS)
                key = f"{sub}.{'_'.join(rng.sample(KEY_WORDS, 2))}{unit}"
                if key not in seen:
                    seen.add(key)
                    break
            unit_word = {"_s": "seconds", "_ms": "milliseconds", "_bytes": "bytes"}.get(
                unit, "units"
            )
            what = rng.choice(["limit", "threshold", "size", "interval", "count"])
            default = str(rng.choice([0, 1, 4, 8, 30, 60, 250, 1024, 65536]))
            text = ENTRY["key"].format(
                key=key, what=what, sub=sub, unit_word=unit_word, default=default
            )
            q = rng.choice(templates["key"]).format(key=key)
            corpus.append({"id": doc_id, "title": key, "text": text})
            questions.append(question("codes", "config_key", doc_id, q, split, answer=key))
    return corpus, questions


def write(name: str, corpus: list[dict[str, Any]], questions: list[dict[str, Any]]) -> None:
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    for file, rows in (("corpus.jsonl", corpus), ("questions.jsonl", questions)):
        (out / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{name}: {len(corpus)} documents, {len(questions)} questions -> {out}")


def main() -> None:
    rng = random.Random(SEED)
    write("handbook", *handbook(rng))
    write("catalog", *catalog(rng))
    write("codes", *codes(rng))


if __name__ == "__main__":
    main()
