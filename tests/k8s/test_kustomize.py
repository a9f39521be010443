"""k8s/ stays what the chart renders: regenerated files match, and `kubectl kustomize`
of each overlay builds exactly the chart's objects for that overlay's spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from tierline.cluster.specfile import load_spec, parse_spec

from tests.k8s.manifests import (
    KUBECTL,
    as_deployed,
    parse_docs,
    release_restricted_problems,
    run,
    serve_config_of,
    tool,
    validate_object,
)
from tools.kustomize import (
    K8S,
    OVERLAYS,
    chart_objects,
    generate,
    generated_on_disk,
    object_key,
    with_namespace,
)


def test_k8s_files_are_generated_from_the_chart() -> None:
    fresh, disk = generate(), generated_on_disk()
    stale = sorted(p for p in set(fresh) | set(disk) if fresh.get(p) != disk.get(p))
    assert not stale, (
        f"k8s/ is out of date with helm/tierline ({', '.join(stale)}): run `make generate`"
    )


def test_crds_ship_with_their_license() -> None:
    names = {p.name for p in (K8S / "crds").iterdir()}
    assert {"LICENSE-KubeRay", "ray.io_rayservices.yaml", "ray.io_rayclusters.yaml"} <= names


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_builds_the_charts_objects(root: Path, overlay: str) -> None:
    res = run([tool(KUBECTL), "kustomize", K8S / "overlays" / overlay])
    assert res.returncode == 0, res.stderr
    built = parse_docs(res.stdout)
    expected = with_namespace(chart_objects(OVERLAYS[overlay]))
    assert sorted(built, key=object_key) == sorted(expected, key=object_key)

    assert [p for obj in built for p in validate_object(obj)] == []
    assert release_restricted_problems(built) == []
    app = serve_config_of(built)["applications"][0]
    assert parse_spec(app["args"]["spec"]) == as_deployed(load_spec(root / OVERLAYS[overlay]))
