"""The Helm chart: lint, render every scenario, and validate every object it makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tierline.cluster.render import serve_config
from tierline.cluster.specfile import load_spec, parse_spec

from tests.k8s.manifests import (
    CHART,
    CI_VALUES,
    HELM,
    HELM3,
    HelmError,
    Obj,
    as_deployed,
    deep_copy,
    helm,
    helm_template,
    one,
    release_restricted_problems,
    serve_config_of,
    validate_object,
)

SCENARIOS = [None, *CI_VALUES]


def scenario_id(path: Path | None) -> str:
    return "defaults" if path is None else path.name.removesuffix("-values.yaml")


@pytest.fixture(scope="module", params=SCENARIOS, ids=scenario_id)
def rendered(request: pytest.FixtureRequest) -> tuple[Path | None, list[Obj]]:
    path = request.param
    return path, helm_template([path] if path else [])


def values_spec(path: Path | None) -> dict:
    if path is None:
        return yaml.safe_load((CHART / "files" / "example-spec.yaml").read_text())
    return yaml.safe_load(path.read_text())["spec"]


def test_ci_scenarios_are_all_there() -> None:
    names = {scenario_id(p) for p in CI_VALUES}
    assert {"minimal", "multi-node-gpu", "external-milvus", "autoscaling"} <= names


def test_helm_lint_every_scenario() -> None:
    for path in SCENARIOS:
        args = ["lint", "--strict", str(CHART)] + (["-f", str(path)] if path else [])
        res = helm(*args)
        assert res.returncode == 0, f"{scenario_id(path)}:\n{res.stdout}\n{res.stderr}"


def test_helm3_renders_what_helm4_renders() -> None:
    """The chart works with Helm 3 (3.17) as with Helm 4: same objects, same schema checks."""
    for path in SCENARIOS:
        args = ["template", "tierline", str(CHART)] + (["-f", str(path)] if path else [])
        h3, h4 = helm(*args, binary=HELM3), helm(*args, binary=HELM)
        assert h3.returncode == 0, h3.stderr
        assert h3.stdout == h4.stdout, scenario_id(path)
    lint = helm("lint", "--strict", str(CHART), binary=HELM3)
    assert lint.returncode == 0, lint.stdout
    bad = helm("template", "t", str(CHART), "--set", "rayAuth.mode=off", binary=HELM3)
    assert bad.returncode != 0
    assert "rayAuth.mode" in bad.stderr


def test_every_object_validates(rendered: tuple[Path | None, list[Obj]]) -> None:
    _, objects = rendered
    problems = [p for obj in objects for p in validate_object(obj)]
    assert problems == []
    assert one(objects, "RayService")["apiVersion"] == "ray.io/v1"


def test_serve_config_passes_rays_own_schema(rendered: tuple[Path | None, list[Obj]]) -> None:
    from ray.serve.schema import ServeDeploySchema

    path, objects = rendered
    config = serve_config_of(objects)
    parsed = ServeDeploySchema.model_validate(config)
    (app,) = parsed.applications
    # The application carries the values' spec, and everything around it is what
    # `tierline render serve` writes for that spec.
    spec = parse_spec(app.args["spec"], "serveConfigV2")
    assert spec == as_deployed(parse_spec(values_spec(path)))
    expected = serve_config(spec)
    for cfg in (config, expected):
        cfg["applications"][0]["args"].pop("spec")
    assert config == expected


def test_default_values_run_the_h100_config(root: Path) -> None:
    """Defaults: the same tiers as configs/h100-single-node.yaml."""
    config = serve_config_of(helm_template())
    spec = parse_spec(config["applications"][0]["args"]["spec"])
    assert spec == as_deployed(load_spec(root / "configs" / "h100-single-node.yaml"))


def test_restricted_pod_security(rendered: tuple[Path | None, list[Obj]]) -> None:
    _, objects = rendered
    assert release_restricted_problems(objects) == []


def test_gpu_worker_groups(rendered: tuple[Path | None, list[Obj]]) -> None:
    path, objects = rendered
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    shapes = {t.get("accelerator_type") for t in values_spec(path)["tiers"]}
    groups = cluster["workerGroupSpecs"]
    declared = {g["rayStartParams"].get("resources") for g in groups}
    for shape in shapes - {None}:
        assert any(f"accelerator_type:{shape}" in (d or "") for d in declared), shape
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["maxReplicas"]
        pod = g["template"]["spec"]
        (c,) = pod["containers"]
        limits = c["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert {"name": "ray-tmp", "mountPath": "/tmp/ray"} in c["volumeMounts"]


def test_network_policy_keeps_ray_ports_inside(rendered: tuple[Path | None, list[Obj]]) -> None:
    _, objects = rendered
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"].endswith("-default-deny"))
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    release = deny["spec"]["podSelector"]["matchLabels"]
    spec = parse_spec(serve_config_of(objects)["applications"][0]["args"]["spec"])
    gateway_port = spec.gateway.port  # the gateway replicas serve it (direct ingress)
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            sources = rule.get("from", [])
            inside = sources == [{"podSelector": {"matchLabels": release}}]
            if inside:
                continue
            # From outside the release: the gateway, metrics, and the dashboard only to
            # the KubeRay operator's pods. Never GCS (6379) or the client port (10001).
            assert ports, f"{policy['metadata']['name']}: a rule open on every port"
            assert not ports & {6379, 10001}
            if 8265 in ports:
                assert ports == {8265}
                assert all("podSelector" in s and "namespaceSelector" in s for s in sources)
            else:
                assert ports <= {gateway_port, 8080}


def test_bad_values_fail_with_the_path() -> None:
    cases = {
        "spec.gateway.port=99999": "/spec/gateway/port",
        "apiKeys.keys=plaintext": "additional properties 'keys'",
        "rayAuth.mode=off": "/rayAuth/mode",
        "upgradeStrategy.type=Rolling": "/upgradeStrategy/type",
        "workerGroups[0].gpusPerPod=-1": "/workerGroups/0",
    }
    for setting, message in cases.items():
        with pytest.raises(HelmError, match="schema") as err:
            helm_template(sets=[setting])
        assert message in str(err.value), (setting, str(err.value))


def test_bad_spec_fails_at_install(tmp_path: Path) -> None:
    minimal = yaml.safe_load((CI_VALUES[0].parent / "minimal-values.yaml").read_text())
    broken = deep_copy(minimal)
    broken["spec"]["tiers"][0]["replicaz"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(HelmError, match="replicaz"):
        helm_template([path])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["spec.gateway.host=127.0.0.1"], "must bind 0.0.0.0"),
        (["apiKeys.existingSecret="], "apiKeys.existingSecret"),
        (["upgradeStrategy.type=NewClusterWithIncrementalUpgrade"], "clusterUpgradeOptions"),
        (["workerGroups[0].acceleratorType=A100"], "no workerGroups entry"),
        # the old opt-in path's switches are gone from the spec (and its schema)
        (["spec.gateway.direct_ingress=true"], "direct_ingress"),
    ],
)
def test_cross_value_checks(sets: list[str], message: str) -> None:
    base = CI_VALUES[0].parent / "minimal-values.yaml"
    with pytest.raises(HelmError, match=message):
        helm_template([base], sets=sets)


def test_validators_catch_broken_objects() -> None:
    """The checks above can fail: each broken copy is caught."""
    objects = helm_template()
    rs = one(objects, "RayService")

    typo = deep_copy(rs)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert validate_object(typo)

    wrong_type = deep_copy(rs)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "one"
    assert validate_object(wrong_type)

    policy = deep_copy(next(o for o in objects if o["kind"] == "NetworkPolicy"))
    policy["spec"]["policyTypes"] = "Ingress"
    assert validate_object(policy)

    root = deep_copy(rs)
    head = root["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head["securityContext"]["runAsNonRoot"] = False
    head["containers"][0]["securityContext"]["capabilities"]["drop"] = []
    head["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = "\n".join(release_restricted_problems([root]))
    assert "runAsNonRoot" in problems
    assert "drop does not include ALL" in problems
    assert "hostPath" in problems


def test_insecure_values_are_caught() -> None:
    objects = helm_template(sets=["podSecurityContext.runAsNonRoot=false"])
    assert any("runAsNonRoot" in p for p in release_restricted_problems(objects))
    objects = helm_template(sets=["securityContext.allowPrivilegeEscalation=true"])
    assert any("allowPrivilegeEscalation" in p for p in release_restricted_problems(objects))


def test_api_keys_come_from_the_secret_only() -> None:
    objects = helm_template()
    assert not [o for o in objects if o["kind"] == "Secret"]
    rs = one(objects, "RayService")
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (keys,) = [v for v in head["volumes"] if v["name"] == "api-keys"]
    assert keys["secret"]["secretName"] == "tierline-api-keys"
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["TIERLINE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "tierline-api-keys"
    assert "value" not in env["TIERLINE_API_KEY"]


def test_rag_storage() -> None:
    ci = CI_VALUES[0].parent
    lite = helm_template([ci / "milvus-lite-values.yaml"])
    pvc = one(lite, "PersistentVolumeClaim")
    head = one(lite, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    vols = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    assert vols["milvus-lite"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "tierline_rag_store" in head["rayStartParams"]["resources"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["TIERLINE_RAG_STORE_RESOURCE"]["value"] == "tierline_rag_store"

    external = helm_template([ci / "external-milvus-values.yaml"])
    assert not [o for o in external if o["kind"] == "PersistentVolumeClaim"]
    head = one(external, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["TIERLINE_MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    allow = next(o for o in external if o["metadata"]["name"].endswith("-allow"))
    assert {"ports": [{"port": 19530, "protocol": "TCP"}]} in allow["spec"]["egress"]

    # The store's place comes from the spec; a Lite path off the PVC or a token in the
    # spec (stored in the RayService for all to read) fails the install.
    with pytest.raises(HelmError, match=r"inside rag\.persistence\.mountPath"):
        helm_template([ci / "milvus-lite-values.yaml"], sets=["spec.rag.uri=/tmp/milvus.db"])
    with pytest.raises(HelmError, match=r"rag\.tokenSecret"):
        helm_template([ci / "external-milvus-values.yaml"], sets=["spec.rag.token=u:p"])

    # Without RAG there is no Milvus at all.
    assert not [o for o in helm_template() if o["kind"] == "PersistentVolumeClaim"]


def test_dashboard_configmap_loads_every_json(tmp_path: Path) -> None:
    """The ConfigMap carries each dashboards/*.json file (shown on a copy of the chart)."""
    import shutil

    chart = tmp_path / "tierline"
    shutil.copytree(CHART, chart)
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    (chart / "dashboards" / "zz-test.json").write_text('{"title": "test", "panels": []}')
    objects = helm_template(chart=chart)
    cm = one(objects, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(cm["data"]) == {p.name for p in dashboards} | {"zz-test.json"}
    assert cm["data"]["zz-test.json"] == '{"title": "test", "panels": []}'
    assert validate_object(cm) == []
    off = helm_template(chart=chart, sets=["dashboards.enabled=false"])
    assert not [o for o in off if o["kind"] == "ConfigMap"]


def _containers(obj: Obj) -> list[Obj]:
    cluster = obj["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["template"]["spec"]["containers"]]


def test_every_ray_pod_runs_the_fast_request_path(
    rendered: tuple[Path | None, list[Obj]],
) -> None:
    """Each pod's Ray processes get the request path's settings, the same ones `tierline
    render serve` says a cluster needs, and expose the port its gateway replica serves."""
    from tierline.cluster.render import ray_process_env

    path, objects = rendered
    spec = parse_spec(values_spec(path))
    service = one(objects, "RayService")
    containers = _containers(service)
    assert len(containers) >= 2 or not service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for container in containers:
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k: env.get(k) for k in ray_process_env(spec)} == ray_process_env(spec)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == spec.gateway.port
    target = service["spec"]["serveService"]["spec"]["ports"][0]["targetPort"]
    assert target == spec.gateway.port
    config = serve_config_of(objects)
    assert config["http_options"]["port"] != spec.gateway.port  # the proxy is elsewhere
    (gateway,) = config["applications"][0]["deployments"]
    assert gateway == {"name": "gateway", "max_replicas_per_node": 1}
