"""`model_aliases`: names apps already send (the OpenAI SDK's examples name `gpt-5.5`)
served as the name each stands for, checked when the spec loads."""

from __future__ import annotations

import pytest
from tierline.cluster.specfile import SpecError, load_spec_text

from tests.unit.test_gateway import SPEC, assert_openai_error, chat, make

ALIASED = (
    SPEC
    + """model_aliases:
  gpt-5.5: auto
  gpt-4o-mini: small
  big: large-model-name
"""
).replace(
    "model_source: org/large", "model_source: org/large\n    served_model_name: large-model-name"
)


def test_an_alias_of_auto_routes_like_auto() -> None:
    client, engines = make(spec_text=ALIASED)
    r = client.post("/v1/chat/completions", json=chat(model="gpt-5.5"))
    assert r.status_code == 200, r.text
    assert r.headers["x-tierline-tier"] == "small"
    assert r.headers["x-tierline-route-reason"] == "auto:default"
    assert engines["small"].calls[0][1]["model"] == "small-model"


@pytest.mark.parametrize(("alias", "tier"), [("gpt-4o-mini", "small"), ("big", "large")])
def test_an_alias_of_a_tier_or_served_name_pins_that_tier(alias: str, tier: str) -> None:
    client, _ = make(spec_text=ALIASED)
    r = client.post("/v1/chat/completions", json=chat(model=alias))
    assert r.status_code == 200, r.text
    assert r.headers["x-tierline-tier"] == tier
    assert r.headers["x-tierline-route-reason"] == "pinned"


def test_unknown_names_are_still_404_and_cards_list_the_aliases() -> None:
    client, _ = make(spec_text=ALIASED)
    err = assert_openai_error(client.post("/v1/chat/completions", json=chat(model="gpt-9")), 404)
    assert err["code"] == "model_not_found"
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    assert cards["auto"]["aliases"] == ["gpt-5.5"]
    assert cards["small-model"]["aliases"] == ["gpt-4o-mini"]
    assert cards["large-model-name"]["aliases"] == ["big"]
    assert client.get("/v1/models/gpt-5.5").json()["id"] == "auto"
    assert client.get("/v1/models/big").json()["id"] == "large-model-name"


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ("  x: nowhere\n", "not a model name"),
        ("  small: auto\n", "already a name"),
        ("  small-model: large\n", "already a name"),
        ("  auto: small\n", "already a name"),
    ],
)
def test_bad_aliases_are_refused_when_the_spec_loads(aliases: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec_text(SPEC + "model_aliases:\n" + aliases)
