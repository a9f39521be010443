"""Loading a spec from YAML, with errors that name the YAML path and line of each bad field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from tierline.cluster.spec import ClusterSpec


@dataclass(frozen=True)
class SpecIssue:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path or '<root>'}{where}: {self.message}"


class SpecError(ValueError):
    """A spec that does not validate; carries every problem found, not just the first."""

    def __init__(self, source: str, issues: Sequence[SpecIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  {i}" for i in self.issues)
        super().__init__(f"{source}: {len(self.issues)} error(s) in spec\n{lines}")


def format_loc(loc: Sequence[int | str]) -> str:
    """('tiers', 1, 'replicas') -> 'tiers[1].replicas'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _node_line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its deepest existing parent."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _issues(err: ValidationError, root: yaml.Node | None) -> list[SpecIssue]:
    out = []
    for e in err.errors(include_url=False):
        # Drop pydantic's internal union/validator tags from the location.
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        msg = e["msg"].removeprefix("Value error, ")
        out.append(SpecIssue(format_loc(loc), msg, _node_line(root, loc)))
    return out


def parse_spec(data: Any, source: str = "<spec>", root: yaml.Node | None = None) -> ClusterSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [SpecIssue("", "a spec must be a YAML mapping")])
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, _issues(err, root)) from None


def is_local_path(model_source: str) -> bool:
    """Local checkpoints are written as paths: './x', '../x', '/x' or '~/x'."""
    return model_source.startswith(("./", "../", "/", "~"))


def _resolve_paths(data: Any, base: Path) -> None:
    """Make relative local model paths absolute against the spec file's folder."""
    if not isinstance(data, dict):
        return
    auth = (
        (data.get("gateway") or {}).get("auth") if isinstance(data.get("gateway"), dict) else None
    )
    if isinstance(auth, dict) and isinstance(auth.get("keys_file"), str):
        auth["keys_file"] = str((base / Path(auth["keys_file"]).expanduser()).resolve())
    router = data.get("router")
    learned = router.get("learned") if isinstance(router, dict) else None
    for key in ("artifact", "profile"):
        if isinstance(learned, dict) and isinstance(learned.get(key), str):
            learned[key] = str((base / Path(learned[key]).expanduser()).resolve())
    tiers = data.get("tiers")
    if not isinstance(tiers, list):
        return
    for tier in tiers:
        if not isinstance(tier, dict):
            continue
        for key in ("model_source", "chat_template"):
            src = tier.get(key)
            if isinstance(src, str) and is_local_path(src):
                tier[key] = str((base / Path(src).expanduser()).resolve())
        for adapter in tier.get("adapters") or []:
            src = adapter.get("source") if isinstance(adapter, dict) else None
            if isinstance(src, str) and is_local_path(src):
                adapter["source"] = str((base / Path(src).expanduser()).resolve())
        external = tier.get("external")
        if not isinstance(external, dict):
            continue
        for key in ("api_key_file", "tokenizer"):
            value = external.get(key)
            if isinstance(value, str) and is_local_path(value):
                external[key] = str((base / Path(value).expanduser()).resolve())


def load_spec_text(text: str, source: str = "<spec>", base_dir: Path | None = None) -> ClusterSpec:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(source, [SpecIssue("", f"not valid YAML: {err}", line)]) from None
    if base_dir is not None:
        _resolve_paths(data, base_dir)
    return parse_spec(data, source, root)


def load_spec(path: str | Path) -> ClusterSpec:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(str(p), [SpecIssue("", f"cannot read spec: {err.strerror}")]) from None
    return load_spec_text(text, str(p), base_dir=p.parent.resolve())


def spec_to_data(spec: ClusterSpec) -> dict[str, Any]:
    """Plain JSON-able data that `parse_spec` turns back into an equal spec."""
    return spec.model_dump(mode="json", exclude_defaults=False)
