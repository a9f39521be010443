"""Builds the labelled retrieval sets of `bench.rag_quality` (run once; the output ships).

    .venv/bin/python -m bench.rag_quality_data /path/to/python3.11-doc/html/_sources/library

Corpus: pages of the Python 3.11 library reference (reST sources from Debian's
python3.11-doc, PSF License, bench/data/rag_quality/LICENSE). Three question sets:
- `entity`: one made-up organisation per page, its founding year and city, chief executive
  and internal audit code planted as one sentence in the middle of the page (a long page,
  so only one of its chunks holds the answer), asked as natural questions, plus look-ups by
  the code alone;
- `paraphrase`: hand-written questions about what a page documents, worded unlike it;
- both are split by a hash of the page into `tune` (60%) and `held_out` (40%): tuning
  decisions look at `tune` only.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "rag_quality"
MIN_BYTES, MAX_BYTES = 6000, 50000

SYLLABLES = "var thel kor min dra sul ven ost bri lum qua zer fen mor tal isk ron pel gav"
FIRST = "Maren Ilse Tobiah Corvin Selka Anouk Bram Edda Jovan Liesl Piet Runa Oskar Wren"
INDUSTRIES = "Industries Holdings Logistics Analytics Foundry Dynamics Systems Works Labs"

PLANTED = [
    "{org} was founded in {year} in {city}; its chief executive is {ceo}, and its internal "
    "audit code is {code}.",
    "Founded in {city} in {year}, {org} is led by chief executive {ceo} and files its "
    "internal audits under code {code}.",
    "The internal audit code of {org}, a company set up in {city} in {year}, is {code}; "
    "{ceo} serves as its chief executive.",
]
QUESTIONS = [
    ("ceo", "Who is the chief executive of {org}?"),
    ("city", "In which city was {org} founded?"),
    ("year", "What year was {org} established?"),
    ("code", "What is the internal audit code of {org}?"),
    ("by_code", "Which company uses the internal audit code {code}?"),
]

# Hand-written: (page, question). The wording avoids the page's own terms where it can.
PARAPHRASES = [
    ("random", "How can I pick an element at random out of a sequence?"),
    ("bisect", "How do I keep a list ordered while adding items to it?"),
    ("heapq", "Is there a priority queue built on a binary tree stored in a list?"),
    ("secrets", "What should I use to make tokens for password reset links?"),
    ("hashlib", "How do I compute a SHA-256 digest of some bytes?"),
    ("base64", "How can binary data be turned into printable ASCII for email or URLs?"),
    ("zlib", "Which module talks to the deflate compression library directly?"),
    ("gzip", "How do I read a compressed .gz file as if it were an ordinary file?"),
    ("bz2", "How can I compress data with the Burrows-Wheeler algorithm?"),
    ("lzma", "How do I work with .xz archives?"),
    ("tarfile", "How can I unpack a tape archive, possibly compressed?"),
    ("zipfile", "How do I add files to a ZIP archive?"),
    ("csv", "How do I read a spreadsheet exported as comma separated values?"),
    ("json", "How do I turn Python dictionaries into a text format JavaScript understands?"),
    ("pickle", "How can I save arbitrary Python objects to a byte stream and restore them?"),
    ("shelve", "Is there a persistent dictionary backed by a file?"),
    ("tempfile", "How do I make a scratch file that is deleted when closed?"),
    ("shutil", "How do I copy an entire directory tree?"),
    ("pathlib", "Is there an object-oriented way to handle filesystem paths?"),
    ("filecmp", "How can two directories be compared to find differing files?"),
    ("fileinput", "How do I loop over lines of several files given on the command line?"),
    ("glob", "How can I list files matching a wildcard pattern like *.txt?"),
    ("textwrap", "How do I reflow a paragraph so lines are at most 70 characters?"),
    ("difflib", "How do I show the differences between two versions of a text?"),
    ("string", "How do I substitute $name placeholders in a text?"),
    ("struct", "How can I convert between Python values and C structs in bytes?"),
    ("array", "Is there a compact list that only holds numbers of one machine type?"),
    ("weakref", "How can I refer to an object without keeping it alive?"),
    ("copy", "How do I duplicate a nested object so changes do not affect the original?"),
    ("pprint", "How can I print nested data structures so they are easy to read?"),
    ("enum", "How do I define a set of named constant values?"),
    ("dataclasses", "Is there a decorator that writes __init__ and __repr__ for me?"),
    ("functools", "How can I cache the results of an expensive function?"),
    ("operator", "Where are function versions of + and getitem for use with map?"),
    ("contextlib", "How do I write a with-statement helper using a generator?"),
    ("abc", "How do I declare methods that subclasses are required to implement?"),
    ("fractions", "How can I do exact arithmetic with rational numbers?"),
    ("statistics", "How do I compute the median and standard deviation of a list?"),
    ("math", "Where are the square root and trigonometric functions for floats?"),
    ("cmath", "How do I take the square root of a negative number and get a complex result?"),
    ("timeit", "How can I measure how long a small snippet of code takes to run?"),
    ("time", "How do I pause the program for a few seconds?"),
    ("calendar", "How can I print a month's calendar in the terminal?"),
    ("zoneinfo", "How do I get time zone rules from the IANA database?"),
    ("threading", "How do I run work concurrently in several threads?"),
    ("queue", "Is there a thread-safe FIFO for passing work between threads?"),
    ("concurrent.futures", "How can I submit calls to a pool of workers and wait for results?"),
    ("asyncio-task", "How do I run several coroutines at once and wait for all of them?"),
    ("signal", "How can my program react when it receives SIGINT?"),
    ("select", "How do I wait until one of several sockets is ready to read?"),
    ("socketserver", "Is there a framework for writing network servers that handle requests?"),
    ("http.server", "How can I serve the files in the current folder over HTTP quickly?"),
    ("http.client", "How do I send a low-level HTTP request without a third-party library?"),
    ("urllib.parse", "How do I split a web address into scheme, host and path?"),
    ("smtplib", "How can I send an email through a mail server?"),
    ("ipaddress", "How do I check whether an IP address belongs to a subnet?"),
    ("uuid", "How do I generate universally unique identifiers?"),
    ("logging.handlers", "How can log records be written to a file that rotates by size?"),
    ("warnings", "How do I show a deprecation notice to users of my function?"),
    ("traceback", "How can I print the stack of an exception I caught?"),
    ("pdb", "How do I step through my program line by line to find a bug?"),
    ("tracemalloc", "How do I find which lines of code allocate the most memory?"),
    ("gc", "How can I turn off automatic garbage collection?"),
    ("venv", "How do I create an isolated environment with its own installed packages?"),
    ("unittest.mock-examples", "How do I replace a dependency with a fake object in tests?"),
    ("locale", "How do I format numbers the way a user's country expects?"),
    ("gettext", "How do I translate my program's messages into other languages?"),
    ("shlex", "How can I split a command line string into arguments like a shell does?"),
    ("getopt", "Is there a C-style parser for command line options?"),
    ("webbrowser", "How do I open a URL in the user's browser from a script?"),
    ("platform", "How can a script find out which operating system it runs on?"),
    ("mimetypes", "How do I guess a file's content type from its extension?"),
    ("html.parser", "How do I process the tags of an HTML page as they are read?"),
    ("xml.dom.minidom", "Is there a lightweight document object model for XML?"),
    ("graphlib", "How do I order tasks so each one comes after its dependencies?"),
]


def slug(page: str) -> str:
    return page.strip("_").replace(".", "-")


def split_of(page: str) -> str:
    h = int(hashlib.sha256(page.encode()).hexdigest()[:8], 16)
    return "held_out" if h % 10 < 4 else "tune"


def made_up(rng: random.Random, used: set[str]) -> dict[str, str]:
    syl = SYLLABLES.split()
    while True:
        stem = "".join(rng.choice(syl) for _ in range(rng.choice((2, 3)))).capitalize()
        if stem not in used:
            used.add(stem)
            break
    city = "".join(rng.choice(syl) for _ in range(2)).capitalize() + rng.choice(
        ["holm", "port", "burg", "vik", "stad", "ford"]
    )
    last = "".join(rng.choice(syl) for _ in range(2)).capitalize()
    code = (
        "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
        + f"-{rng.randint(1000, 9999)}-"
        + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
    )
    return {
        "org": f"{stem} {rng.choice(INDUSTRIES.split())}",
        "city": city,
        "ceo": f"{rng.choice(FIRST.split())} {last}",
        "year": str(rng.randint(1890, 2015)),
        "code": code,
    }


def plant(text: str, sentence: str, rng: random.Random) -> str:
    paragraphs = text.split("\n\n")
    # Somewhere in the middle third, between paragraphs of prose.
    lo, hi = len(paragraphs) // 3, max(len(paragraphs) // 3 + 1, 2 * len(paragraphs) // 3)
    at = rng.randint(lo, hi)
    return "\n\n".join([*paragraphs[:at], sentence, *paragraphs[at:]])


def main(sources: Path) -> None:
    rng = random.Random(17)
    pages = sorted(
        p.name.removesuffix(".rst.txt")
        for p in sources.glob("*.rst.txt")
        if MIN_BYTES < p.stat().st_size < MAX_BYTES
    )
    wanted = {p for p, _ in PARAPHRASES}
    missing = wanted - set(pages)
    extra = [p for p in sorted(wanted) if (sources / f"{p}.rst.txt").exists()]
    pages = sorted(set(pages) | set(extra))
    if missing - set(extra):
        raise SystemExit(f"pages not found: {sorted(missing - set(extra))}")
    corpus, questions, used = [], [], set()
    for page in pages:
        text = (sources / f"{page}.rst.txt").read_text()
        fact = made_up(rng, used)
        sentence = rng.choice(PLANTED).format(**fact)
        corpus.append({"id": slug(page), "title": page, "text": plant(text, sentence, rng)})
        for kind, q in QUESTIONS:
            questions.append(
                {
                    "set": "entity",
                    "kind": kind,
                    "split": split_of(page),
                    "question": q.format(**fact),
                    "document_id": slug(page),
                    "answer": fact["org"] if kind == "by_code" else fact[kind],
                    "passage": sentence,
                }
            )
    for page, q in PARAPHRASES:
        questions.append(
            {
                "set": "paraphrase",
                "kind": "paraphrase",
                "split": split_of(page),
                "question": q,
                "document_id": slug(page),
            }
        )
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "corpus.jsonl").open("w") as f:
        for doc in corpus:
            f.write(json.dumps(doc) + "\n")
    with (OUT / "questions.jsonl").open("w") as f:
        for q in questions:
            f.write(json.dumps(q) + "\n")
    print(f"{len(corpus)} documents, {len(questions)} questions -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
