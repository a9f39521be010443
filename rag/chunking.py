"""Token-aware chunking with overlap, as a pure function of token offsets.

The caller tokenizes (with the embedding model's own tokenizer, so a chunk fits the
model's window) and passes each token's character span; chunks are slices of the
original text, so nothing is lost to detokenization. A span is also bounded in UTF-8
bytes (`MAX_CHUNK_BYTES`, under the store's VARCHAR limit, which counts bytes): a span of
few but very long tokens is cut further.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tierline.rag.records import Chunk, Document
from tierline.rag.versions import versioned_id

Offsets = Sequence[tuple[int, int]]
Tokenize = Callable[[str], Offsets]
MAX_CHUNK_BYTES = 60_000  # the store's text field holds 65,535 bytes


def windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token index windows [start, end) of at most `size`, each sharing `overlap` with the last."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size (size={size}, overlap={overlap})")
    out: list[tuple[int, int]] = []
    start = 0
    while start < n_tokens:
        end = min(start + size, n_tokens)
        out.append((start, end))
        if end == n_tokens:
            break
        start = end - overlap
    return out


def _byte_bounded(text: str, begin: int, end: int, limit: int) -> list[tuple[int, int]]:
    """[begin, end) cut into spans of at most `limit` UTF-8 bytes, at character bounds."""
    out = []
    while len(text[begin:end].encode()) > limit:
        # Every character is at most 4 bytes: `limit // 4` characters always fit; grow
        # from there by the bytes still free.
        cut = begin + max(1, limit // 4)
        used = len(text[begin:cut].encode())
        while cut < end and used + len(text[cut].encode()) <= limit:
            used += len(text[cut].encode())
            cut += 1
        out.append((begin, cut))
        begin = cut
    out.append((begin, end))
    return out


def chunk_spans(
    text: str, offsets: Offsets, size: int, overlap: int, max_bytes: int = MAX_CHUNK_BYTES
) -> list[tuple[int, int]]:
    """Character spans of the chunks; a window ends at the end of its last token."""
    spans: list[tuple[int, int]] = []
    for first, last in windows(len(offsets), size, overlap):
        begin = offsets[first][0]
        end = offsets[last - 1][1]
        if text[begin:end].strip():
            spans.extend(
                (b, e) for b, e in _byte_bounded(text, begin, end, max_bytes) if text[b:e].strip()
            )
    return spans


def chunk_document(
    doc: Document, tokenize: Tokenize, size: int, overlap: int, version: int = 0
) -> list[Chunk]:
    """The document's chunks, with ids of `version` (`rag.versions`)."""
    spans = chunk_spans(doc.text, tokenize(doc.text), size, overlap)
    return [
        Chunk(
            chunk_id=versioned_id(doc.id, version, i, len(spans)),
            document_id=doc.id,
            position=i,
            text=doc.text[b:e].strip(),
            metadata=dict(doc.metadata),
        )
        for i, (b, e) in enumerate(spans)
    ]
