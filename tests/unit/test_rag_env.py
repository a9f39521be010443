"""The Helm chart's RAG settings reach the code (issue 16).

Before, the chart rendered TIERLINE_MILVUS_TOKEN and TIERLINE_RAG_STORE_RESOURCE but no
code read either: an authenticated Milvus got an empty token and the RAG replica could
land on a pod without Milvus Lite's volume. tests/k8s/test_chart.py checks the same
names against the rendered manifests.
"""

from __future__ import annotations

import pytest
from tierline.cluster.spec import RagSpec
from tierline.cluster.specfile import load_spec_text
from tierline.deployments.rag.deployment import build_rag_apps
from tierline.deployments.rag.env import (
    MILVUS_TOKEN_ENV,
    RAG_STORE_RESOURCE_ENV,
    STORE_RESOURCE_AMOUNT,
    RagEnvError,
    chunk_store,
    milvus_token,
    rag_actor_options,
)

SPEC = """
tiers:
  - name: small
    model_source: org/small
    max_context_tokens: 4096
rag:
  enabled: true
  uri: {uri}
"""


def test_the_milvus_token_reaches_the_store_client() -> None:
    remote = RagSpec(uri="http://milvus:19530")
    store = chunk_store(remote, {MILVUS_TOKEN_ENV: "root:secret"})
    assert (store.uri, store.token) == ("http://milvus:19530", "root:secret")
    assert chunk_store(remote, {}).token is None
    assert chunk_store(remote, {MILVUS_TOKEN_ENV: "  "}).token is None
    # A token in the spec (local runs) is used as before.
    spec_token = RagSpec(uri="http://milvus:19530", token="u:p")
    assert milvus_token(spec_token, {MILVUS_TOKEN_ENV: "other"}) == "u:p"


def test_the_rag_replica_asks_for_the_store_resource() -> None:
    spec = load_spec_text(SPEC.format(uri="/var/lib/tierline/rag/milvus.db"))
    rag, _ = build_rag_apps(spec, environ={RAG_STORE_RESOURCE_ENV: "tierline_rag_store"})
    options = rag._bound_deployment.ray_actor_options
    assert options["resources"] == {"tierline_rag_store": STORE_RESOURCE_AMOUNT}
    assert 0 < STORE_RESOURCE_AMOUNT <= 1
    # Unset (local runs, an external Milvus): placed anywhere, as before.
    rag, _ = build_rag_apps(spec, environ={})
    assert "resources" not in rag._bound_deployment.ray_actor_options


@pytest.mark.parametrize("bad", ["has space", "{json}", "x" * 200])
def test_a_malformed_resource_name_is_an_error_naming_the_variable(bad: str) -> None:
    with pytest.raises(RagEnvError, match=RAG_STORE_RESOURCE_ENV):
        rag_actor_options({RAG_STORE_RESOURCE_ENV: bad})
