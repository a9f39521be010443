"""Reading a node's GPUs through NVML, behind small Protocols.

`NvmlLibrary` is the handful of pynvml calls tierline makes; the real one is the `pynvml`
module of `nvidia-ml-py`, and `RecordedNvml` replays a JSON recording of the same calls
(`python -m tierline.cluster.nvml record > node.json` on a GPU host writes one). `NvmlGpuReader`
turns either into `NodeGpus`. A machine without GPUs or without the NVIDIA driver reads
as zero GPUs with a one-line reason, never an exception.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "GpuReader",
    "GpuReading",
    "NodeGpus",
    "NvmlGpuReader",
    "NvmlLibrary",
    "RecordedNvml",
    "record",
]


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_ratio: float | None  # 0..1 over NVML's last sample period
    temperature_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class NodeGpus:
    gpus: list[GpuReading] = field(default_factory=list)
    driver_version: str | None = None
    status: str = "ok"  # "ok", or why there are no readings (no driver, no GPUs)


class GpuReader(Protocol):
    def read(self) -> NodeGpus: ...


class NvmlLibrary(Protocol):
    """The pynvml calls tierline makes (pynvml's own names)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> Any: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> Any: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(call: Any, *args: Any) -> Any:
    """A reading some GPUs do not support (NVML raises NotSupported): None instead."""
    try:
        return call(*args)
    except Exception:
        return None


class NvmlGpuReader:
    """GpuReader over an NVML library; `library=None` imports pynvml on first read."""

    def __init__(self, library: NvmlLibrary | None = None) -> None:
        self._library = library

    def _load(self) -> NvmlLibrary | str:
        if self._library is not None:
            return self._library
        try:
            import pynvml
        except ImportError:
            return "nvidia-ml-py is not installed"
        return pynvml

    def read(self) -> NodeGpus:
        lib = self._load()
        if isinstance(lib, str):
            return NodeGpus(status=lib)
        try:
            lib.nvmlInit()
        except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return NodeGpus(status=f"no NVIDIA driver: {err}")
        try:
            driver = _text(_optional(lib.nvmlSystemGetDriverVersion) or "") or None
            count = int(lib.nvmlDeviceGetCount())
            gpus = [self._device(lib, i) for i in range(count)]
        except Exception as err:
            return NodeGpus(status=f"NVML read failed: {err}")
        finally:
            _optional(lib.nvmlShutdown)
        return NodeGpus(gpus, driver, "ok" if gpus else "no GPUs")

    @staticmethod
    def _device(lib: NvmlLibrary, index: int) -> GpuReading:
        h = lib.nvmlDeviceGetHandleByIndex(index)
        mem = lib.nvmlDeviceGetMemoryInfo(h)
        util = _optional(lib.nvmlDeviceGetUtilizationRates, h)
        temp = _optional(lib.nvmlDeviceGetTemperature, h, 0)  # NVML_TEMPERATURE_GPU
        power_mw = _optional(lib.nvmlDeviceGetPowerUsage, h)
        return GpuReading(
            index=index,
            name=_text(lib.nvmlDeviceGetName(h)),
            uuid=_text(_optional(lib.nvmlDeviceGetUUID, h) or f"gpu-{index}"),
            memory_total_bytes=int(mem.total),
            memory_used_bytes=int(mem.used),
            utilization_ratio=None if util is None else float(util.gpu) / 100.0,
            temperature_c=None if temp is None else float(temp),
            power_w=None if power_mw is None else float(power_mw) / 1000.0,
        )


class _Fields:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.__dict__.update(data)


class _RecordedError(Exception):
    pass


class RecordedNvml:
    """Replays a recording: `{"init_error"?, "driver_version", "devices": [{raw calls}]}`.

    Each device holds the raw answers: `name`, `uuid`, `memory` ({total, used, free} bytes),
    `utilization` ({gpu, memory} percent), `temperature` (C), `power_mw`; a missing key
    behaves as NVML's NotSupported.
    """

    def __init__(self, recording: Mapping[str, Any]) -> None:
        self._rec = recording

    def _dev(self, handle: Any, key: str) -> Any:
        dev = self._rec["devices"][handle]
        if key not in dev:
            raise _RecordedError(f"{key}: Not Supported")
        return dev[key]

    def nvmlInit(self) -> None:
        if self._rec.get("init_error"):
            raise _RecordedError(self._rec["init_error"])

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> Any:
        return self._rec.get("driver_version", "")

    def nvmlDeviceGetCount(self) -> int:
        return len(self._rec.get("devices", []))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return index

    def nvmlDeviceGetName(self, handle: Any) -> Any:
        return self._dev(handle, "name")

    def nvmlDeviceGetUUID(self, handle: Any) -> Any:
        return self._dev(handle, "uuid")

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return _Fields(self._dev(handle, "memory"))

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        return _Fields(self._dev(handle, "utilization"))

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> Any:
        return self._dev(handle, "temperature")

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> Any:
        return self._dev(handle, "power_mw")


def record(lib: NvmlLibrary) -> dict[str, Any]:
    """The raw NVML answers of this machine, in `RecordedNvml`'s format."""
    try:
        lib.nvmlInit()
    except Exception as err:
        return {"init_error": str(err), "devices": []}
    try:
        devices = []
        for i in range(int(lib.nvmlDeviceGetCount())):
            h = lib.nvmlDeviceGetHandleByIndex(i)
            dev: dict[str, Any] = {"name": _text(lib.nvmlDeviceGetName(h))}
            for key, call, conv in (
                ("uuid", lib.nvmlDeviceGetUUID, _text),
                ("memory", lib.nvmlDeviceGetMemoryInfo, _mem),
                ("utilization", lib.nvmlDeviceGetUtilizationRates, _util),
                ("power_mw", lib.nvmlDeviceGetPowerUsage, int),
            ):
                value = _optional(call, h)
                if value is not None:
                    dev[key] = conv(value)
            temp = _optional(lib.nvmlDeviceGetTemperature, h, 0)
            if temp is not None:
                dev["temperature"] = int(temp)
            devices.append(dev)
        driver = _text(_optional(lib.nvmlSystemGetDriverVersion) or "")
        return {"driver_version": driver, "devices": devices}
    finally:
        _optional(lib.nvmlShutdown)


def _mem(m: Any) -> dict[str, int]:
    return {"total": int(m.total), "used": int(m.used), "free": int(m.free)}


def _util(u: Any) -> dict[str, int]:
    return {"gpu": int(u.gpu), "memory": int(u.memory)}


def _main(argv: list[str]) -> int:
    if argv[:1] != ["record"]:
        print("usage: python -m tierline.cluster.nvml record > node.json", file=sys.stderr)
        return 2
    try:
        import pynvml
    except ImportError:
        print(json.dumps({"init_error": "nvidia-ml-py is not installed", "devices": []}))
        return 0
    print(json.dumps(record(pynvml), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
