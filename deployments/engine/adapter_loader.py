"""The engine side of adapters: a Ray Serve LLM `LoraModelLoader` that takes each
adapter's source from the spec instead of one object-store folder.

It runs in the engine replica (`LLMServer(model_downloader=...)`) and reads the table of
engine adapter id -> source that `deployments.engine.deployment` puts in the `LLMConfig`'s
`experimental_configs`. Local directories are used where they are; object-store URIs go
through Ray's own download-and-cache path. Imported only where Ray Serve LLM is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.common.utils.cloud_utils import LoraMirrorConfig
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from tierline.cluster.spec import REMOTE_URI_PREFIXES
from tierline.deployments.engine.adapters import ADAPTER_CONFIG, SOURCES_KEY


class TierAdapterLoader(LoraModelLoader):
    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
        sources: dict[str, str] = llm_config.experimental_configs.get(SOURCES_KEY, {})
        source = sources.get(lora_model_id)
        if source is None:
            raise ValueError(f"adapter {lora_model_id!r} is not one of this tier's")
        if source.startswith(REMOTE_URI_PREFIXES):
            mirror = LoraMirrorConfig(
                lora_model_id=lora_model_id, bucket_uri=source, max_total_tokens=None
            )
            return await self.load_model(lora_model_id, mirror)
        if lora_model_id not in self.disk_cache:
            path = Path(source).expanduser()
            if not (path / ADAPTER_CONFIG).is_file():
                raise ValueError(f"adapter {lora_model_id!r}: {path} holds no adapter")
            self.disk_cache[lora_model_id] = DiskMultiplexConfig(
                model_id=lora_model_id,
                max_total_tokens=None,
                local_path=str(path),
                lora_assigned_int_id=global_id_manager.next(),
            )
        return self.disk_cache[lora_model_id]
