"""docs/configuration.md is generated from the pydantic spec and must not fall behind it.

The walk over the models here is written independently of tools/config_docs.py, so a
field the generator skipped, or a description it dropped, fails a test.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, Field
from tierline.cluster.spec import ClusterSpec, GatewaySpec, RagSpec, TierSpec

from tools.config_docs import OUTPUT, escape_cell, render, slug


def _models_in(annotation: object) -> Iterator[tuple[type[BaseModel], bool]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
        return
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        for model, is_list in _models_in(arg):
            yield model, is_list or origin is list


def _fields(
    model: type[BaseModel] = ClusterSpec, prefix: str = ""
) -> Iterator[tuple[str, str | None]]:
    """(full YAML path, description) of every field of every model reachable from `model`."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, field.description
        for nested, is_list in _models_in(field.annotation):
            yield from _fields(nested, path + ("[]" if is_list else ""))


def _row(doc: str, path: str) -> str:
    rows = [line for line in doc.splitlines() if line.startswith(f"| `{path}` |")]
    assert len(rows) == 1, f"{path}: {len(rows)} rows in docs/configuration.md"
    return rows[0]


def test_the_checked_in_reference_is_up_to_date() -> None:
    assert OUTPUT.is_file(), "docs/configuration.md is missing: run `make generate`"
    assert OUTPUT.read_text() == render(), (
        "docs/configuration.md is stale (cluster/spec/ changed): run `make generate`"
    )


def test_render_is_deterministic() -> None:
    assert render() == render()


def test_it_says_it_is_generated() -> None:
    head = render().splitlines()[0]
    assert "make generate" in head and "cluster/spec/" in head


def test_every_field_appears_with_its_description() -> None:
    doc = render()
    fields = list(_fields())
    # Sanity of the walk itself: nested models and lists of them are reached.
    paths = {p for p, _ in fields}
    assert {"tiers[].external.base_url", "gateway.tenants[].name", "router.cascade.enabled"} <= (
        paths
    )
    assert len(fields) > 100
    for path, description in fields:
        row = _row(doc, path)
        if description:
            assert escape_cell(description) in row, f"{path}: description missing"


def test_every_section_has_a_heading_and_the_links_resolve() -> None:
    doc = render()
    headings = {slug(line[3:]) for line in doc.splitlines() if line.startswith("## ")}
    for section in ("tiers[]", "tiers[].autoscaling", "gateway.auth", "router.learned", "rag"):
        assert f"## `{section}`" in doc
    targets = {part.split(")")[0] for part in doc.split("](#")[1:]}
    assert targets, "no section links"
    assert targets <= headings, f"links to missing sections: {sorted(targets - headings)}"


def test_sections_follow_yaml_path_order() -> None:
    titles = [line[3:] for line in render().splitlines() if line.startswith("## `")]
    order = [t.strip("`") for t in titles]
    assert order.index("tiers[]") < order.index("tiers[].external") < order.index("router")
    assert order.index("router") < order.index("router.params") < order.index("gateway")
    assert order.index("gateway") < order.index("gateway.auth") < order.index("rag")


def test_defaults_types_and_constraints_come_from_the_models() -> None:
    doc = render()
    port = _row(doc, "gateway.port")
    assert "integer" in port and "`8000`" in port and "≥ 1" in port and "≤ 65534" in port
    assert "required" in _row(doc, "tiers[].max_context_tokens")
    assert "`null`" in _row(doc, "tiers[].replicas")
    assert '`"pow2"`' in _row(doc, "tiers[].replica_routing")
    assert '`"prefix"`' in _row(doc, "tiers[].replica_routing")
    assert '"step by step"' in _row(doc, "router.params.hard_keywords")  # a default factory
    assert "matches `" in _row(doc, "tiers[].name")


@pytest.mark.parametrize(
    ("model", "field"),
    [(GatewaySpec, "retries"), (TierSpec, "fallback_tier"), (RagSpec, "rrf_k")],
)
def test_a_changed_description_makes_the_file_stale(
    monkeypatch: pytest.MonkeyPatch, model: type[BaseModel], field: str
) -> None:
    before = render()
    monkeypatch.setattr(model.model_fields[field], "description", "A brand-new description.")
    after = render()
    assert after != before
    assert after != OUTPUT.read_text()  # what test_the_checked_in_reference_... would see
    assert "A brand-new description." in after


class _Extra(BaseModel):
    knob: int = Field(3, ge=1, description="A knob in a new section.")


class _Gateway(GatewaySpec):
    retries: int = Field(2, ge=0, le=10, description="Said differently now.")
    extra: _Extra = Field(default_factory=_Extra)


class _Spec(ClusterSpec):
    gateway: _Gateway = Field(default_factory=_Gateway)


def test_a_modified_spec_renders_differently() -> None:
    """A copy of the spec with one description changed and one section added: the
    reference shows both, so the checked-in file would be stale."""
    doc = render(_Spec)
    assert doc != render()
    assert "Said differently now." in _row(doc, "gateway.retries")
    assert "## `gateway.extra`" in doc
    assert "A knob in a new section." in _row(doc, "gateway.extra.knob")
    assert "≥ 1" in _row(doc, "gateway.extra.knob")
    assert _row(doc, "gateway.retries") != _row(render(), "gateway.retries")


def test_type_of_optional_nested_and_list_fields() -> None:
    # Guards the helper the field walk uses, with plain typing forms.
    assert list(_models_in(TierSpec | None)) == [(TierSpec, False)]
    assert list(_models_in(list[TierSpec])) == [(TierSpec, True)]
    assert list(_models_in(typing.Optional[list[TierSpec]])) == [(TierSpec, True)]  # noqa: UP045
    assert list(_models_in(int | None)) == []
    assert isinstance(TierSpec | None, types.UnionType)
