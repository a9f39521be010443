"""Running the helm and kubectl binaries that `make helm` fetches into .cache/.

Used by the generators (tools/kustomize.py renders the chart into k8s/) and by the chart
tests under tests/k8s/.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tierline"
CI_VALUES = sorted((ROOT / "helm" / "ci").glob("*-values.yaml"))
CRDS = ROOT / "k8s" / "crds"
HELM = ROOT / ".cache" / "kube" / "helm" / "helm"  # Helm 4
HELM3 = ROOT / ".cache" / "kube-helm3" / "helm" / "helm"
KUBECTL = ROOT / ".cache" / "kube" / "kubectl" / "kubectl"
KUBERNETES_VERSION = "1.33.0"
RELEASE = "tierline"

Obj = dict[str, Any]


def tool(path: Path) -> Path:
    if not path.exists():
        raise RuntimeError(f"{path} is missing: `make helm` fetches helm and kubectl")
    return path


def run(cmd: Sequence[str | Path], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)


def helm(*args: str | Path, binary: Path = HELM) -> subprocess.CompletedProcess[str]:
    return run([tool(binary), *args])


def parse_docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template(
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    chart: Path = CHART,
    release: str = RELEASE,
) -> list[Obj]:
    """Objects `helm template` renders; raises with helm's message when it fails."""
    args: list[str | Path] = ["template", release, chart]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    res = helm(*args)
    if res.returncode != 0:
        raise HelmError(res.stderr.strip())
    return parse_docs(res.stdout)


class HelmError(RuntimeError):
    pass
