"""Tiny random-weight LoRA adapters for the tiny base models, built offline with `peft`.

They stand in for fine-tuned adapters in tests and local runs: seeded random A and B
matrices (both non-zero, unlike peft's training init where B starts at zero), so each
adapter really changes the base model's output and two adapters differ from each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TinyAdapter:
    """Shape of one tiny adapter. vLLM accepts ranks 8, 16, 32, 64, ... up to max_lora_rank."""

    name: str
    rank: int = 8
    alpha: int = 16
    seed: int = 0


TINY_ADAPTERS = (TinyAdapter("tiny-a", seed=11), TinyAdapter("tiny-b", seed=12))


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and any(path.glob("adapter_model.*"))


def build_adapter(base: Path, shape: TinyAdapter, out: Path) -> Path:
    """Write the adapter directory `out/shape.name` for the base checkpoint `base`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    target = out / shape.name
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(shape.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=shape.rank,
        lora_alpha=shape.alpha,
        target_modules=list(TARGET_MODULES),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random A and B: the adapter changes the output
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(target), safe_serialization=True)
    info = {**asdict(shape), "base": str(base)}
    (target / "tierline-tiny-adapter.json").write_text(json.dumps(info, indent=2) + "\n")
    return target


def ensure_tiny_adapters(base: Path, out: Path, force: bool = False) -> list[tuple[Path, bool]]:
    """Build any missing tiny adapter for `base` under `out`; (path, built_now) each."""
    results = []
    for shape in TINY_ADAPTERS:
        path = out / shape.name
        if force or not is_adapter(path):
            results.append((build_adapter(base, shape, out), True))
        else:
            results.append((path, False))
    return results
