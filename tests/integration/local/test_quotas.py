"""Issue 16: a tenant's tokens_per_min holds against the bypasses, counted on the client's
side with the official openai client (tenants `metered`, 600 tokens a minute, and
`strict`, 300, from this package's conftest).

- streams that ask for no usage line and set no max_tokens: each is charged what it was
  served, so what the tenant is served stays within its quota;
- a request without max_tokens reserves the tier's remaining context;
- a prompt list reserves every prompt times n, and a list over gateway.max_prompts is a 400.
"""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import TENANT_KEYS
from tests.integration.local.conftest import Cluster

MSG = [{"role": "user", "content": "Tell me a long story about the sea."}]


def tenant(cluster: Cluster, name: str) -> OpenAI:
    return OpenAI(
        base_url=f"{cluster.url}/v1", api_key=TENANT_KEYS[name], max_retries=0, timeout=120
    )


def test_streams_without_usage_or_max_tokens_stay_within_tokens_per_min(cluster: Cluster) -> None:
    # The prompt's length, asked by the unlimited tenant (the metered one sees no usage).
    prompt = cluster.client().chat.completions.create(
        model="tiny-small", messages=MSG, max_tokens=1
    )
    assert prompt.usage is not None
    c = tenant(cluster, "metered")
    served, codes = 0, []
    for _ in range(6):
        try:
            stream = c.chat.completions.create(
                model="tiny-small",
                messages=MSG,
                stream=True,
                stream_options={"include_usage": False},
                temperature=1.0,
            )
            chunks = list(stream)
        except openai.RateLimitError as err:
            codes.append(429)
            assert err.response.headers.get("retry-after")
            continue
        codes.append(200)
        assert all(ch.usage is None for ch in chunks)  # none asked for, none sent
        # one chunk per generated token (stream batching is off): counted here, not by usage
        served += prompt.usage.prompt_tokens + sum(1 for ch in chunks if ch.choices)
    assert 200 in codes and 429 in codes, codes
    assert served <= 600, f"served {served} tokens against tokens_per_min 600 ({codes})"


def test_missing_max_tokens_and_prompt_lists_reserve_their_worst_case(cluster: Cluster) -> None:
    c = tenant(cluster, "strict")  # 300 tokens a minute
    # Without max_tokens a completion may run to the end of tiny-small's 512-token context.
    with pytest.raises(openai.RateLimitError) as no_budget:
        c.chat.completions.create(model="tiny-small", messages=MSG)
    assert "max_tokens" in no_budget.value.message
    # 16 prompts x n=2, each up to 8 tokens: more than 300, though one prompt is tiny.
    prompts = ["Once upon a time"] * 16
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="tiny-large", prompt=prompts, n=2, max_tokens=8)
    with pytest.raises(openai.BadRequestError) as too_many:
        c.completions.create(model="tiny-large", prompt=["x"] * 65, max_tokens=1)
    assert too_many.value.code == "too_many_prompts" and "64" in too_many.value.message
    one = c.completions.create(model="tiny-large", prompt=prompts[:2], max_tokens=4)
    assert one.usage is not None and len(one.choices) == 2


def _quota_replica() -> str:
    """The actor name of the `quota` deployment's one running replica."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "#quota#" in a["name"]
    ]
    alive = []
    for name in names:
        try:
            ray.get_actor(name, namespace="serve")
            alive.append(name)
        except ValueError:
            pass
    assert len(alive) == 1, names
    return alive[0]


def _quota_running() -> bool:
    from ray import serve

    for app in serve.status().applications.values():
        dep = app.deployments.get("quota")
        if dep is not None:
            return dep.status == "HEALTHY" and dep.replica_states.get("RUNNING") == 1
    return False


def test_a_tenant_at_its_budget_is_still_refused_after_the_quota_replica_crashes(
    cluster: Cluster,
) -> None:
    """The quota windows live in the Responses store (saved every 5 s): a crash of the one
    quota replica (killed, so no last save) does not hand the tenant a fresh minute."""
    import time

    import ray
    from tierline.deployments.gateway.quota.service import SAVE_EVERY_S

    c = tenant(cluster, "kept")  # 200 tokens a minute
    codes = []
    for _ in range(20):
        try:
            c.chat.completions.create(model="tiny-small", messages=MSG, max_tokens=16)
            codes.append(200)
        except openai.RateLimitError as err:
            codes.append(429)
            assert "tokens per minute" in err.message
            break
    assert codes[0] == 200 and codes[-1] == 429, codes
    time.sleep(SAVE_EVERY_S + 1.5)  # one periodic save has run since the last charge
    old = _quota_replica()
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 45
    new = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            new = _quota_replica()
        except AssertionError:  # none running yet
            continue
        if new != old:
            break
    assert new is not None and new != old, "Serve did not start a new quota replica in 45 s"
    while time.monotonic() < deadline and not _quota_running():
        time.sleep(0.5)
    assert _quota_running(), "the new quota replica did not become healthy in 45 s"
    with pytest.raises(openai.RateLimitError) as refused:
        c.chat.completions.create(model="tiny-small", messages=MSG, max_tokens=16)
    assert "tokens per minute" in refused.value.message
    assert refused.value.response.headers.get("retry-after")
    # the unlimited tenant is served by the new replica as before
    ok = cluster.client().chat.completions.create(model="tiny-small", messages=MSG, max_tokens=1)
    assert ok.usage is not None
