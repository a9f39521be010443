"""`tierline up --sample DIR`: a small corpus ingested on first start, so that a new
user's first grounded answer has documents to cite (`make run` passes tierline's own
docs/). Ingested through the gateway's API with the local key, as a user would."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierline.cli.rag import files_under, upload

SAMPLE_COLLECTION = "tierline_docs"


class SampleError(Exception):
    """The sample could not be ingested (the cluster itself is fine)."""


@dataclass(frozen=True)
class Sample:
    collection: str
    documents: int
    chunks: int
    ingested_now: bool
    took_s: float


def _check(resp: Any) -> Any:
    if resp.status_code >= 400:
        raise SampleError(f"{resp.request.url.path}: {resp.status_code} {resp.text[:300]}")
    return resp.json()


def ensure_sample(
    url: str, api_key: str, folder: Path, collection: str = SAMPLE_COLLECTION
) -> Sample:
    """The sample collection of the key's tenant: ingested from `folder` unless it already
    holds documents (a restart keeps what the store has)."""
    import httpx

    t0 = time.monotonic()
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=300) as http:
        for c in _check(http.get("/v1/rag/collections"))["data"]:
            if c["name"] == collection and c["documents"] > 0:
                took = time.monotonic() - t0
                return Sample(collection, c["documents"], c["chunks"], False, took)
        if not folder.is_dir():
            raise SampleError(f"no such folder: {folder}")
        files = list(files_under([folder]))
        if not files:
            raise SampleError(f"no .txt, .md, .html or .pdf file under {folder}")
        chunks = upload(http, collection, files, {"sample": True}, lambda: None, _check)
    return Sample(collection, len(files), chunks, True, time.monotonic() - t0)
