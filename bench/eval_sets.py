"""`make eval`'s labelled sets, built here from seeds, not shared with any other benchmark.

Three kinds, built in different ways, each split into `dev` (what prompts and settings
were looked at with) and `held_out` (reported, never tuned on):
- `entities`: made-up organisations, each a one-paragraph document with three planted
  facts (founder, year, city), generated from name parts; the question asks for one fact
  in the words the document uses, the answer must contain it.
- `policies`: hand-written policy paragraphs with a planted number, asked in other words
  than the paragraph uses (paraphrases); the answer must contain the number.
- `memory`: made-up facts told to the Responses API in one turn and asked for in the
  next over `previous_response_id` (20 held out).
Tool runs use made-up order ids whose tool result carries a planted ship date.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SEED = 26


@dataclass(frozen=True)
class GroundedItem:
    doc_id: str
    text: str
    question: str
    answer: str  # must appear in the model's answer (case-insensitive)


@dataclass(frozen=True)
class MemoryItem:
    statement: str
    question: str
    answer: str


@dataclass(frozen=True)
class ToolItem:
    order_id: str
    ship_date: str
    question: str


_FIRST = ["Mara", "Ilya", "Tove", "Osric", "Lenka", "Davi", "Runa", "Kasimir", "Yara", "Emeric",
          "Solveig", "Teodor", "Anouk", "Bram", "Zofia", "Caspian", "Ines", "Orin", "Liesel",
          "Nadir", "Helka", "Quentin", "Saoirse", "Vidar", "Elodie", "Jarek", "Mireille",
          "Tobiah", "Annika", "Lucan"]  # fmt: skip
_LAST = ["Voss", "Kerrigan", "Altmann", "Quill", "Dragomir", "Faure", "Halloran", "Ibsen",
         "Jankowski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Rasku", "Sandoval",
         "Tamura", "Uhlig", "Varga", "Wexley", "Yilmaz", "Zeller", "Brannock", "Castellan",
         "Dunmore", "Esterhaz", "Fenwick", "Gorski", "Hartigan", "Ivers"]  # fmt: skip
_STEM = ["Zentrix", "Corvane", "Lumora", "Pellix", "Quorvo", "Stratyn", "Velmark", "Xandor",
         "Brelio", "Dovetta", "Ferrix", "Glimra", "Halvex", "Istrel", "Jorvik", "Kelsant",
         "Lorvane", "Mervax", "Nobrel", "Ovantis", "Prysma", "Rendal", "Sylvor", "Tarnex",
         "Umbrel", "Vantor", "Wystan", "Yorvex", "Zephra", "Aldrix"]  # fmt: skip
_KIND = ["Labs", "Robotics", "Foods", "Analytics", "Shipping", "Textiles", "Optics", "Energy"]
_CITY = ["Tallinn", "Porto", "Ljubljana", "Bergen", "Gdansk", "Lyon", "Tampere", "Brno",
         "Cork", "Graz", "Malmo", "Utrecht", "Bilbao", "Aarhus", "Trieste"]  # fmt: skip


def entities(n: int = 30, seed: int = SEED) -> list[GroundedItem]:
    """`n` made-up organisations; the asked fact rotates founder, year, city."""
    rng = random.Random(seed)
    stems = rng.sample(_STEM, n)
    items = []
    for i, stem in enumerate(stems):
        name = f"{stem} {rng.choice(_KIND)}"
        founder = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        year = str(rng.randint(1961, 2019))
        city = rng.choice(_CITY)
        text = (
            f"{name} was founded by {founder} in {year}. Its headquarters are in {city}. "
            f"{name} employs {rng.randint(12, 900)} people."
        )
        kind = i % 3
        if kind == 0:
            q, a = f"Who founded {name}?", founder.split()[-1]
        elif kind == 1:
            q, a = f"In which year was {name} founded?", year
        else:
            q, a = f"In which city are the headquarters of {name}?", city
        items.append(GroundedItem(f"org-{i:02d}", text, q, a))
    return items


# (document text, question in other words, planted answer)
_POLICIES = [
    ("Travel policy. Employees who travel for work may claim a daily meal allowance of "
     "43 euros. Receipts are not required for meals.",
     "How much money per day can staff get for food on a work trip?", "43"),
    ("Leave policy. Every employee receives 27 days of paid annual leave. Unused days "
     "expire at the end of March.",
     "How many paid holiday days does a worker get each year?", "27"),
    ("Security policy. Laptop passwords must be at least 14 characters long and are "
     "changed once a year.",
     "What is the minimum length of a laptop password?", "14"),
    ("Remote work policy. Staff may work from home up to 3 days per week after their "
     "probation period.",
     "How many days a week can people work remotely?", "3"),
    ("Expense policy. Purchases above 750 euros need written approval from a director "
     "before the order is placed.",
     "Above what amount does a purchase need a director's sign-off?", "750"),
    ("Parental policy. New parents receive 19 weeks of paid parental leave.",
     "How long is paid leave for new parents?", "19"),
    ("Training policy. Each employee has a yearly learning budget of 1200 euros for "
     "courses and books.",
     "How much can an employee spend on courses per year?", "1200"),
    ("Equipment policy. Company phones are replaced every 36 months.",
     "How often does the company give staff a new phone?", "36"),
    ("Onboarding policy. A new hire is paired with a mentor for the first 90 days.",
     "For how long does a newcomer have a mentor?", "90"),
    ("Sick leave policy. A doctor's note is needed after 4 consecutive days of sick "
     "leave.",
     "After how many days off ill must someone bring a medical certificate?", "4"),
    ("Bicycle policy. Employees who cycle to work receive 18 cents per kilometre.",
     "What is the per-kilometre payment for biking to the office?", "18"),
    ("Overtime policy. Overtime is paid at 150 percent of the hourly rate.",
     "At what percentage of normal pay are extra hours paid?", "150"),
    ("Conference policy. Staff may attend 2 paid conferences per year.",
     "How many conferences a year does the company pay for?", "2"),
    ("Notice policy. Employees must give 6 weeks of notice before leaving.",
     "How much warning must someone give before quitting?", "6"),
    ("Wellness policy. The company pays 35 euros a month towards a gym membership.",
     "What is the monthly gym subsidy?", "35"),
    ("Archive policy. Invoices are kept for 10 years before they are destroyed.",
     "How long are invoices stored?", "10"),
]  # fmt: skip


def policies() -> list[GroundedItem]:
    return [GroundedItem(f"policy-{i:02d}", t, q, a) for i, (t, q, a) in enumerate(_POLICIES)]


_THINGS = ["blue door", "north gate", "spare key", "red folder", "night shift", "garden shed",
           "back office", "loading dock", "west tower", "old server", "main vault", "side exit",
           "top drawer", "river boat", "attic room", "front desk", "tool locker", "music room",
           "green van", "wine cellar", "east wing", "glass box"]  # fmt: skip
_WORDS = ["pelican", "marigold", "tundra", "saffron", "quasar", "juniper", "obsidian", "lantern",
          "cobalt", "meadow", "falcon", "ember", "walnut", "glacier", "harbor", "orchid",
          "thistle", "copper", "nebula", "willow", "badger", "citron"]  # fmt: skip


def memory(n: int = 22, seed: int = SEED) -> list[MemoryItem]:
    rng = random.Random(seed + 1)
    things = rng.sample(_THINGS, n)
    words = rng.sample(_WORDS, n)
    return [
        MemoryItem(
            f"Please remember this: the code word for the {t} is {w}.",
            f"What is the code word for the {t}?",
            w,
        )
        for t, w in zip(things, words, strict=True)
    ]


_MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]


def tool_items(n: int = 22, seed: int = SEED) -> list[ToolItem]:
    rng = random.Random(seed + 2)
    out = []
    for _ in range(n):
        order = str(rng.randint(10000, 99999))
        date = f"{rng.choice(_MONTHS)} {rng.randint(2, 28)}"
        out.append(ToolItem(order, date, f"When will my order {order} ship?"))
    return out


def split(items: list, dev: int) -> dict[str, list]:
    """The first `dev` items for development, the rest held out."""
    return {"dev": items[:dev], "held_out": items[dev:]}


_ALL_MONTHS = {
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
}  # fmt: skip


def contains(answer: str, expected: str) -> bool:
    """Whether `answer` states `expected`: as whole words, any case ("September 2" is not
    in "September 27"). A date "Month D" counts in the other orders English writes it
    too: "Month Dth", "D Month", "Dth of Month" (the same fact, as a model may restate a
    tool's result)."""
    text = answer.lower()
    date = re.fullmatch(r"([a-z]+) (\d{1,2})", expected.lower())
    if date is not None and date.group(1) in _ALL_MONTHS:
        month, day = date.groups()
        nth = rf"{day}(?:st|nd|rd|th)?"
        forms = (rf"\b{month}\s+{nth}\b", rf"\b{nth}\s+(?:of\s+)?{month}\b")
        return any(re.search(f, text) for f in forms)
    return re.search(rf"(?<!\w){re.escape(expected.lower())}(?!\w)", text) is not None
