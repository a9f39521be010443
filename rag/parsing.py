"""Turning uploaded files into plain text: text, Markdown, HTML (BeautifulSoup), PDF (pypdf)."""

from __future__ import annotations

import io
from pathlib import PurePath

from tierline.rag.records import RagError

KINDS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
CONTENT_TYPES = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/pdf": "pdf",
}


def detect_kind(filename: str | None, content_type: str | None) -> str:
    """The document kind from the file suffix, else the content type; 415 if neither is known."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in KINDS:
        return KINDS[suffix]
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in CONTENT_TYPES:
        return CONTENT_TYPES[ctype]
    raise RagError(
        415,
        f"unsupported file type {suffix or ctype or 'unknown'!r} for {filename!r}; "
        f"supported: {', '.join(sorted(KINDS))}",
        code="unsupported_file_type",
        param="file",
    )


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RagError(
            400, f"{name}: text is not valid UTF-8", code="invalid_document", param="file"
        ) from None


def html_to_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)


def pdf_to_text(data: bytes, name: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, OSError) as err:
        raise RagError(
            400, f"{name}: not a readable PDF ({err})", code="invalid_document", param="file"
        ) from None


def parse_file(data: bytes, filename: str | None, content_type: str | None = None) -> str:
    """Plain text of a file; Markdown stays as it is (its markup reads fine to an LLM)."""
    kind = detect_kind(filename, content_type)
    name = filename or "upload"
    if kind == "pdf":
        return pdf_to_text(data, name)
    text = _decode(data, name)
    return html_to_text(text) if kind == "html" else text
