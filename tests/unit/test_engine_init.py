"""The engine start skips Ray Serve LLM's per-node download task only where it would
download nothing."""

from __future__ import annotations

import pytest
from tierline.cluster.spec import TierSpec
from tierline.deployments.engine.deployment import ENGINE_INIT_CALLBACK, llm_config_kwargs
from tierline.deployments.engine.init import SkipLocalSourceInit, needs_download


@pytest.mark.parametrize(
    ("source", "mirror", "expected"),
    [
        ("/models/tiny-small", False, False),
        ("Qwen/Qwen2.5-7B-Instruct", False, False),
        ("s3://bucket/qwen", False, True),
        ("gs://bucket/qwen", False, True),
        ("abfss://c@a.dfs.core.windows.net/m", False, True),
        ("azure://c/m", False, True),
        ("pyarrow-s3://bucket/m", False, True),
        ("Qwen/Qwen2.5-7B-Instruct", True, True),
        (None, True, True),
    ],
)
def test_only_remote_sources_need_the_download_task(
    source: str | None, mirror: bool, expected: bool
) -> None:
    assert needs_download(source, mirror) is expected


def test_every_tier_names_the_callback_and_it_resolves() -> None:
    tier = TierSpec(name="t", model_source="/models/m", max_context_tokens=512)
    kwargs = llm_config_kwargs(tier)
    assert kwargs["callback_config"] == {"callback_class": ENGINE_INIT_CALLBACK}
    from ray.llm._internal.common.utils.import_utils import load_class

    assert load_class(ENGINE_INIT_CALLBACK) is SkipLocalSourceInit


def test_the_callback_turns_the_task_off_for_a_local_source_only(tmp_path, monkeypatch) -> None:
    import asyncio

    from ray.serve.llm import LLMConfig

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for source, runs in [(str(tmp_path), False), ("s3://bucket/model", True)]:
        config = LLMConfig(
            model_loading_config={"model_id": "m", "model_source": source},
            accelerator_type=None,
        )
        callback = SkipLocalSourceInit(llm_config=config)
        asyncio.run(callback.on_before_node_init())
        assert callback.ctx.run_init_node is runs, source
    assert (tmp_path / "torch" / "kernels").is_dir()
