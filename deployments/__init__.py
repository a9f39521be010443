"""Ray Serve deployments, one room per part of the deployment graph:

- `gateway/`: the ingress (HTTP, the request pipeline, the engines' clients, quotas,
  metrics, the Responses API);
- `engine/`: one vLLM engine deployment per tier, with its relay door;
- `rag/`: the embeddings and vector store deployment;
- `app.py` binds them into one Serve application; `errors`, `logs`, `heap`, `sse` and
  `sqlstore` are shared by the rooms.
"""

if (
    __name__ != "tierline.deployments"
):  # the folder deployments/ installs as tierline.deployments only
    raise ImportError(
        f"import tierline.deployments, not {__name__} (`pip install -e .` maps deployments/ to it)"
    )
