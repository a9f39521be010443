"""Token-aware chunking with overlap, as a pure function of token offsets.

The caller tokenizes (with the embedding model's own tokenizer, so a chunk fits the
model's window) and passes each token's character span; chunks are slices of the
original text, so nothing is lost to detokenization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tierline.rag.records import Chunk, Document, chunk_id

Offsets = Sequence[tuple[int, int]]
Tokenize = Callable[[str], Offsets]


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


def chunk_spans(text: str, offsets: Offsets, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of the chunks; a window ends at the end of its last token."""
    spans = []
    for first, last in windows(len(offsets), size, overlap):
        begin = offsets[first][0]
        end = offsets[last - 1][1]
        if text[begin:end].strip():
            spans.append((begin, end))
    return spans


def chunk_document(doc: Document, tokenize: Tokenize, size: int, overlap: int) -> list[Chunk]:
    spans = chunk_spans(doc.text, tokenize(doc.text), size, overlap)
    return [
        Chunk(
            chunk_id=chunk_id(doc.id, i),
            document_id=doc.id,
            position=i,
            text=doc.text[b:e].strip(),
            metadata=dict(doc.metadata),
        )
        for i, (b, e) in enumerate(spans)
    ]
