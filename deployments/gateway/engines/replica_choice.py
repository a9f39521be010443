"""Which engine replica of a tier gets a relayed request: pure functions and plain state.

- Prefix affinity (tiers with `replica_routing: prefix`), the rule of Ray Serve LLM's
  prefix-cache affinity router, kept by the gateway now that it picks the replica:
  `PrefixMemory` remembers, per replica, the prompt prefixes it was sent (hashes of the
  prompt's first 128, 256, ... characters, least recently used dropped past a bound).
  While the replicas' loads differ by at most `imbalance`, a request goes to the replica
  holding the longest match of its prefix, and a prompt seen nowhere goes to the replica
  holding the least text, so new conversations spread and each then stays on its replica
  (a follow-up turn resends the conversation so far: a longer match on the same replica).
  Past the imbalance, power of two choices.
- Otherwise: power of two choices on the requests in flight from this gateway replica.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BLOCK_CHARS", "PREFIX_CHARS", "PrefixMemory", "choose_replica", "prefix_text"]

BLOCK_CHARS = 128
"""Prefix granularity (characters)."""
PREFIX_CHARS = 8192
"""How much of the prompt's start is matched."""


def prefix_text(method: str, body: Mapping[str, Any], chars: int = PREFIX_CHARS) -> str:
    """The start of the request's prompt as one string (chat: the messages' text in
    order, roles included), cut at `chars`."""
    if method != "chat":
        prompt = body.get("prompt")
        return (prompt if isinstance(prompt, str) else str(prompt or ""))[:chars]
    parts: list[str] = []
    size = 0
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        text = f"{message.get('role', '')}:{content or ''}\n"
        parts.append(text)
        size += len(text)
        if size >= chars:
            break
    return "".join(parts)[:chars]


def blocks(text: str, block: int = BLOCK_CHARS) -> list[bytes]:
    """Hashes of the text's first `block`, `2 * block`, ... characters (whole blocks)."""
    out = []
    h = hashlib.blake2b(digest_size=12)
    for i in range(0, len(text) - block + 1, block):
        h.update(text[i : i + block].encode())
        out.append(h.copy().digest())
    return out


class PrefixMemory:
    """Per replica, the prefix blocks it was sent (LRU, at most `max_blocks` each)."""

    def __init__(self, max_blocks: int = 20_000) -> None:
        self.max_blocks = max_blocks
        self._held: dict[str, OrderedDict[bytes, None]] = {}

    def match(self, replica: str, keys: Sequence[bytes]) -> int:
        """How many leading blocks of `keys` the replica holds."""
        held = self._held.get(replica)
        if not held:
            return 0
        n = 0
        for k in keys:
            if k not in held:
                break
            n += 1
        return n

    def size(self, replica: str) -> int:
        return len(self._held.get(replica) or ())

    def record(self, replica: str, keys: Sequence[bytes]) -> None:
        held = self._held.setdefault(replica, OrderedDict())
        for k in keys:
            held[k] = None
            held.move_to_end(k)
        while len(held) > self.max_blocks:
            held.popitem(last=False)

    def keep_only(self, replicas: Sequence[str]) -> None:
        for gone in set(self._held) - set(replicas):
            del self._held[gone]


def choose_replica(
    loads: Mapping[str, int],
    matches: Mapping[str, int] | None = None,
    sizes: Mapping[str, int] | None = None,
    imbalance: int = 4,
    rng: random.Random | None = None,
) -> str:
    """The replica for a request. `loads`: each live replica's requests in flight;
    `matches`/`sizes` (prefix affinity only): the prefix blocks of this request each
    replica holds, and how many blocks it holds in all."""
    if not loads:
        raise ValueError("no replica to choose from")
    names = sorted(loads)
    if len(names) == 1:
        return names[0]
    pick = rng or random
    if matches is not None and max(loads.values()) - min(loads.values()) <= imbalance:
        best = max(matches.get(r, 0) for r in names)
        if best > 0:
            tied = [r for r in names if matches.get(r, 0) == best]
        else:
            held = sizes or {}
            least = min(held.get(r, 0) for r in names)
            tied = [r for r in names if held.get(r, 0) == least]
        return min(tied, key=lambda r: (loads[r], pick.random()))
    a, b = pick.sample(names, 2)
    return a if loads[a] <= loads[b] else b
