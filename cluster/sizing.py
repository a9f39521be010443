"""How much memory a tier's model needs, and what its tokens cost. Pure functions.

A model's size comes from the spec (`params_b`, `dtype`) or from its checkpoint's
`config.json` (Hugging Face layout). The KV cache per token comes from the config's
architecture when there is one, otherwise from a rule of thumb for grouped-query models
(`KV_KIB_PER_TOKEN_PER_CBRT_B`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierline.cluster.spec import TierSpec
from tierline.cluster.specfile import is_local_path

__all__ = [
    "DTYPE_BYTES",
    "KV_KIB_PER_TOKEN_PER_CBRT_B",
    "ModelSize",
    "TierCost",
    "derived_price_per_1m",
    "model_size",
    "params_b_from_config",
    "read_checkpoint_config",
    "tier_cost",
]

GIB = float(1 << 30)
DTYPE_BYTES: dict[str, float] = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}
# Llama 3 8B/70B/405B keep 128/320/504 KiB of bf16 KV cache per token; 72 KiB times the
# cube root of the parameter count in billions is within ~20% of those and errs high.
KV_KIB_PER_TOKEN_PER_CBRT_B = 72.0


@dataclass(frozen=True)
class ModelSize:
    """Memory one copy of a model needs: its weights, and the KV cache per token."""

    weights_gib: float
    kv_bytes_per_token: float
    source: str  # "params_b/dtype", "config.json" or "unknown"

    @property
    def known(self) -> bool:
        return self.source != "unknown"

    def kv_gib(self, tokens: int) -> float:
        return self.kv_bytes_per_token * tokens / GIB


def _kv_dtype_bytes(tier: TierSpec, weight_dtype: str | None) -> float:
    kv = str(tier.engine_kwargs.get("kv_cache_dtype", "auto"))
    if kv.startswith("fp8"):
        return 1.0
    return 4.0 if weight_dtype == "float32" else 2.0


def params_b_from_config(cfg: Mapping[str, Any]) -> float | None:
    """Parameter count (billions) of a decoder-only transformer from its config.json."""
    try:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        vocab = int(cfg["vocab_size"])
        heads = int(cfg["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter * experts
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return (layers * (attn + mlp + 2 * hidden) + embed) / 1e9


def _kv_bytes_from_config(cfg: Mapping[str, Any], kv_bytes: float) -> float | None:
    try:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return 2.0 * layers * kv_heads * head_dim * kv_bytes


def _config_dtype(cfg: Mapping[str, Any]) -> str | None:
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")) if isinstance(quant, Mapping) else ""
    if "fp8" in method:
        return "fp8"
    bits = quant.get("bits") if isinstance(quant, Mapping) else None
    if bits in (4, 8):
        return f"int{bits}"
    raw = str(cfg.get("torch_dtype") or cfg.get("dtype") or "")
    return raw if raw in DTYPE_BYTES else None


def model_size(tier: TierSpec, config: Mapping[str, Any] | None = None) -> ModelSize:
    """Memory of one copy of `tier`'s model; `config` is its checkpoint's config.json if read.

    The spec's `params_b`/`dtype` win over the checkpoint's; the checkpoint's architecture
    gives the exact KV cache per token.
    """
    cfg = config or {}
    dtype = tier.dtype or _config_dtype(cfg) or "bfloat16"
    params_b = tier.params_b if tier.params_b is not None else params_b_from_config(cfg)
    if params_b is None:
        return ModelSize(0.0, 0.0, "unknown")
    kv_bytes = _kv_dtype_bytes(tier, dtype)
    kv = _kv_bytes_from_config(cfg, kv_bytes)
    if kv is None:
        kv = KV_KIB_PER_TOKEN_PER_CBRT_B * 1024 * params_b ** (1 / 3) * kv_bytes / 2.0
    source = "params_b/dtype" if tier.params_b is not None else "config.json"
    return ModelSize(params_b * 1e9 * DTYPE_BYTES[dtype] / GIB, kv, source)


def read_checkpoint_config(
    tier: TierSpec, read_text: Callable[[Path], str] = Path.read_text
) -> dict[str, Any] | None:
    """The config.json of a tier's local checkpoint, or None (hub ids are not fetched)."""
    if tier.model_source is None or not is_local_path(tier.model_source):
        return None  # a hub id, or an external tier
    path = Path(tier.model_source).expanduser() / "config.json"
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def derived_price_per_1m(gpus: int, gpu_hour_price_usd: float, tokens_per_s: float) -> float:
    """US dollars per 1M tokens of one replica that holds `gpus` GPUs busy.

    price = gpus * gpu_hour_price_usd / (tokens_per_s * 3600) * 1e6
    """
    if tokens_per_s <= 0:
        raise ValueError("tokens_per_s must be positive")
    return gpus * gpu_hour_price_usd * 1e6 / (tokens_per_s * 3600.0)


@dataclass(frozen=True)
class TierCost:
    """What a tier costs to run, and its token prices (given, or derived from GPU-hours)."""

    gpus: int
    usd_per_hour: float | None
    input_per_1m: float
    output_per_1m: float
    input_derived: bool
    output_derived: bool


def tier_cost(tier: TierSpec, gpus_per_replica: int, replicas: int) -> TierCost:
    """Cost of `replicas` replicas; a zero token price is derived when the spec allows.

    A price is derived when the tier has `gpu_hour_price_usd` and the measured throughput
    of that direction (`measured_input_tokens_per_s` / `measured_output_tokens_per_s`).
    """
    hourly = tier.gpu_hour_price_usd
    per_hour = None if hourly is None else hourly * gpus_per_replica * replicas
    prices: list[tuple[float, bool]] = []
    for given, tps in (
        (tier.price_per_1m_input_tokens, tier.measured_input_tokens_per_s),
        (tier.price_per_1m_output_tokens, tier.measured_output_tokens_per_s),
    ):
        if given == 0 and hourly is not None and tps is not None and gpus_per_replica > 0:
            prices.append((derived_price_per_1m(gpus_per_replica, hourly, tps), True))
        else:
            prices.append((given, False))
    return TierCost(
        gpus=gpus_per_replica * replicas,
        usd_per_hour=per_hour,
        input_per_1m=prices[0][0],
        output_per_1m=prices[1][0],
        input_derived=prices[0][1],
        output_derived=prices[1][1],
    )
