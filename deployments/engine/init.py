"""Engine start without Ray Serve LLM's node-initialisation task where it has nothing to do.

Before it starts vLLM, Ray Serve LLM's `LLMServer` runs one Ray task per node of the
replica's placement group to download the model from a cloud mirror. Each task starts a
fresh Ray worker that imports torch and transformers: about 35 s per engine start on these
2-core machines, measured in the replica's log between "Running tasks to download model
files" and vLLM's executor start. For a model source that is a local path or a Hugging Face
id (no `s3://`-style address, no mirror), the task downloads nothing and hands back the
source unchanged (Ray 2.60's `download_model_files`): the only thing it does is create
torch's hub `kernels` folder. `SkipLocalSourceInit` makes that folder itself and skips
the tasks for those sources; remote sources keep Ray's download.
"""

from __future__ import annotations

import os

# Ray 2.60 exports no public name for the callback base class; the version is pinned
from ray.llm._internal.common.callbacks.base import CallbackBase

REMOTE_SCHEMES = ("s3://", "gs://", "abfss://", "azure://", "pyarrow-")


def needs_download(model_source: str | None, has_mirror: bool) -> bool:
    """Whether Ray Serve LLM's per-node task would fetch anything for this source."""
    return has_mirror or (model_source is not None and model_source.startswith(REMOTE_SCHEMES))


class SkipLocalSourceInit(CallbackBase):
    async def on_before_node_init(self) -> None:
        config = self.llm_config.get_engine_config()
        if config is None:  # no engine config: leave Ray's task as it is
            return
        if needs_download(config.actual_hf_model_id, config.mirror_config is not None):
            return
        import torch

        os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)
        self.ctx.run_init_node = False
