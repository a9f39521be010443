"""Ray Serve deployments: one vLLM engine deployment per tier, and the gateway ingress."""

if (
    __name__ != "tierline.deployments"
):  # the folder deployments/ installs as tierline.deployments only
    raise ImportError(
        f"import tierline.deployments, not {__name__} (`pip install -e .` maps deployments/ to it)"
    )
