"""Turning uploaded files into plain text: text, Markdown, HTML (BeautifulSoup), PDF (pypdf)."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from dataclasses import dataclass
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


# -- bounded parsing -------------------------------------------------------------------
# HTML and PDF parsing is CPU- and memory-hungry on hostile input (900 KB of nested tags
# took 5.6 s and 204 MB in BeautifulSoup, on the gateway's event loop). Such files are
# parsed in a fresh worker process each (`python -c ...worker_main()`: no fork of the
# threaded gateway, nothing left running), which caps its own address space before it
# reads the file; the gateway kills it at the deadline. Text and Markdown only need
# decoding, bounded by the size limit, and stay in process.

PARSED_KINDS = frozenset({"html", "pdf"})
_WORKER = "from tierline.rag.parsing import worker_main; worker_main()"
_OUT_OF_MEMORY = 3


@dataclass(frozen=True)
class ParseLimits:
    """Limits on one uploaded file. Errors name the spec setting each comes from."""

    max_file_bytes: int
    timeout_s: float
    memory_bytes: int
    workers: int = 2


def _limit_error(status: int, message: str, code: str) -> RagError:
    return RagError(status, message, code=code, param="file")


def worker_main() -> None:
    """The parse worker: a JSON header line, then the file on stdin; JSON result on stdout."""
    import resource

    header = json.loads(sys.stdin.buffer.readline())
    memory = int(header["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(header["timeout_s"]) + 2  # a backstop should the gateway not kill it
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        data = sys.stdin.buffer.read()
        try:
            out: dict[str, object] = {"text": parse_file(data, header["filename"], header["ctype"])}
        except RagError as err:
            out = {"error": [err.status, err.message, err.code, err.param]}
        except RecursionError:
            out = {
                "error": [
                    422,
                    f"{header['filename']}: nested too deeply to parse",
                    "invalid_document",
                    "file",
                ]
            }
        sys.stdout.write(json.dumps(out))
        sys.stdout.flush()
    except MemoryError:
        sys.exit(_OUT_OF_MEMORY)


class UploadParser:
    """`parse_file` within `ParseLimits`, off the event loop; at most `workers` at once.

    Starts nothing until a file needs parsing."""

    def __init__(self, limits: ParseLimits) -> None:
        self.limits = limits
        self._slots: asyncio.Semaphore | None = None

    async def parse(self, data: bytes, filename: str | None, content_type: str | None) -> str:
        """Plain text of an uploaded file; RagError 413/422 naming the limit it broke."""
        lim = self.limits
        name = filename or "upload"
        kind = detect_kind(filename, content_type)
        if len(data) > lim.max_file_bytes:
            raise _limit_error(
                413,
                f"{name}: {len(data)} bytes; the limit is {lim.max_file_bytes} bytes per "
                "file (rag.max_file_bytes)",
                "file_too_large",
            )
        if kind not in PARSED_KINDS:
            return parse_file(data, filename, content_type)
        if self._slots is None:
            self._slots = asyncio.Semaphore(lim.workers)
        async with self._slots:
            return await self._in_worker(data, name, content_type)

    async def _in_worker(self, data: bytes, name: str, content_type: str | None) -> str:
        lim = self.limits
        header = {
            "filename": name,
            "ctype": content_type,
            "memory_bytes": lim.memory_bytes,
            "timeout_s": lim.timeout_s,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(
                proc.communicate(json.dumps(header).encode() + b"\n" + data), lim.timeout_s
            )
        except TimeoutError:
            raise _limit_error(
                422,
                f"{name}: parsing took longer than {lim.timeout_s:g} s (rag.parse_timeout_s)",
                "parse_timeout",
            ) from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        code = await proc.wait()  # it has exited: communicate() waited for it
        if code == 0:
            result = json.loads(out)
            if "error" in result:
                raise RagError(*result["error"])
            return str(result["text"])
        if code == -signal.SIGXCPU:
            raise _limit_error(
                422,
                f"{name}: parsing took longer than {lim.timeout_s:g} s of CPU "
                "(rag.parse_timeout_s)",
                "parse_timeout",
            )
        if code == _OUT_OF_MEMORY or code < 0:
            raise _limit_error(
                413,
                f"{name}: parsing needed more than {lim.memory_bytes >> 20} MiB "
                "(rag.parse_memory_mib)",
                "parse_memory_exceeded",
            )
        raise _limit_error(422, f"{name}: the parser failed (exit status {code})", "parse_failed")
