"""The top layer: the `tierline` command and the local cluster it starts.

It drives everything below it (deployments, router, rag, cluster); nothing imports it.
"""

if __name__ != "tierline.cli":  # the folder cli/ installs as tierline.cli only
    raise ImportError(f"import tierline.cli, not {__name__} (`pip install -e .` maps cli/ to it)")
