"""The Kubernetes manifests render, pass the Kubernetes API schemas (kubernetes-validate, strict), and keep the
platform's rules: probes, limits, disruption budgets, autoscaling of stateless services, collector shards with
stable identities, credentials from a Secret, and only the gateway reachable from outside."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import BACKENDS, DEPLOY, SERVICES

RENDER = DEPLOY / "kubernetes" / "render.py"
# The oldest Kubernetes the manifests support (pod-index label: 1.28+) and the newest the validator knows.
VERSIONS = ("1.30.0", "1.37.0")


def _render(tmp_path: Path, *args: str) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path / "shuidian.yaml"
    with out.open("w") as sink:
        subprocess.run([sys.executable, str(RENDER), *args], stdout=sink, check=True)
    return out, [doc for doc in yaml.safe_load_all(out.read_text()) if doc]


def _validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    if not Path(validator).exists():
        pytest.fail("kubernetes-validate is not installed (make test-deploy installs it)")
    return subprocess.run(
        [validator, "--strict", "--quiet", "-k", version, str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifests_pass_the_kubernetes_schemas(tmp_path: Path, version: str) -> None:
    env = tmp_path / "secrets.env"
    env.write_text("DATABASE_URL=postgresql://shuidian:x@db:5432/shuidian\nSERVICE_TOKEN_SECRET=s\n")
    path, docs = _render(tmp_path, "--secret-from-env", str(env))
    result = _validate(path, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(docs) > 20


def test_the_validator_rejects_a_broken_manifest(tmp_path: Path) -> None:
    path, docs = _render(tmp_path)
    docs[0]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    docs[1]["spec"]["unknownField"] = True
    path.write_text(yaml.safe_dump_all(docs))
    assert _validate(path, VERSIONS[-1]).returncode != 0


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_every_service_has_probes_limits_a_budget_and_no_root(tmp_path: Path) -> None:
    _, docs = _render(tmp_path)
    workloads = {**_by_kind(docs, "Deployment"), **_by_kind(docs, "StatefulSet")}
    assert set(workloads) == set(SERVICES)
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # Credentials only from the Secret, never a literal value.
        secret_names = {
            "DATABASE_URL",
            "MQTT_URL",
            "SERVICE_TOKEN_SECRET",
            "GATEWAY_JWT_SECRET",
            "GATEWAY_STAFF_API_KEY",
        }
        for variable in container["env"]:
            if variable["name"] in secret_names:
                assert "secretKeyRef" in variable["valueFrom"], (name, variable)
    assert set(_by_kind(docs, "PodDisruptionBudget")) == set(workloads)
    # Insights is not autoscaled by default: its load is the nightly job, not requests (values.yaml).
    assert set(_by_kind(docs, "HorizontalPodAutoscaler")) == {"gateway", "billing", "control", "alarm"}


def test_collector_shards_have_a_stable_identity_and_their_own_volume(tmp_path: Path) -> None:
    _, docs = _render(tmp_path)
    collector = _by_kind(docs, "StatefulSet")["collector"]
    env = {v["name"]: v for v in collector["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["COLLECTOR_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "pod-index" in env["COLLECTOR_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["COLLECTOR_SHARD_COUNT"]["value"] == str(collector["spec"]["replicas"])
    assert collector["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_only_the_gateway_is_reachable_from_outside(tmp_path: Path) -> None:
    _, docs = _render(tmp_path)
    policies = _by_kind(docs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for backend in BACKENDS:
        for rule in policies[f"{backend}-ingress"]["spec"]["ingress"]:
            assert rule["from"], backend  # always a named source: the gateway's pods or the monitoring namespace
    assert any("from" not in rule for rule in policies["gateway-ingress"]["spec"]["ingress"])
    services = _by_kind(docs, "Service")
    assert {name for name, s in services.items() if s["spec"].get("type", "ClusterIP") != "ClusterIP"} <= {"gateway"}
    assert [doc["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] for doc in docs if doc["kind"] == "Ingress"] == ["gateway"]  # fmt: skip


def _plain_env(workload: dict[str, Any]) -> dict[str, str | None]:
    return {v["name"]: v.get("value") for v in workload["spec"]["template"]["spec"]["containers"][0]["env"]}


def _pods_admitted(policy: dict[str, Any]) -> set[str]:
    return {
        source["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for rule in policy["spec"]["ingress"]
        for source in rule["from"]
        if "podSelector" in source
    }


def test_each_backend_admits_only_its_callers(tmp_path: Path) -> None:
    _, docs = _render(tmp_path)
    policies = _by_kind(docs, "NetworkPolicy")
    admitted = {backend: _pods_admitted(policies[f"{backend}-ingress"]) for backend in BACKENDS}
    # Insights reads rooms and tariffs from billing; nothing but the gateway calls insights.
    assert admitted == {"collector": {"gateway"}, "billing": {"gateway", "insights"}, "control": {"gateway"},
                        "alarm": {"gateway"}, "insights": {"gateway"}}  # fmt: skip
    deployments = _by_kind(docs, "Deployment")
    assert _plain_env(deployments["insights"])["INSIGHTS_BILLING_URL"] == "http://billing:8002"
    assert _plain_env(deployments["gateway"])["GATEWAY_INSIGHTS_URL"] == "http://insights:8005"


def test_operator_values_override_the_defaults(tmp_path: Path) -> None:
    override = tmp_path / "site.yaml"
    override.write_text("image: {tag: '1.4.0'}\nservices: {collector: {shards: 4}}\ningress: {enabled: false}\n")
    _, docs = _render(tmp_path, "-f", str(override))
    collector = _by_kind(docs, "StatefulSet")["collector"]
    assert collector["spec"]["replicas"] == 4
    assert collector["spec"]["template"]["spec"]["containers"][0]["image"].endswith("/collector:1.4.0")
    assert not [doc for doc in docs if doc["kind"] == "Ingress"]
    assert _by_kind(docs, "Deployment")["gateway"]["spec"]["replicas"] == 2  # untouched defaults stay


def test_insights_runs_two_replicas_since_its_nightly_job_takes_a_lock(tmp_path: Path) -> None:
    _, docs = _render(tmp_path)
    insights = _by_kind(docs, "Deployment")["insights"]
    assert insights["spec"]["replicas"] == 2
    # A rolling upgrade keeps both serving: one new pod at a time, none taken away first.
    assert insights["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert _by_kind(docs, "PodDisruptionBudget")["insights"]["spec"]["maxUnavailable"] == 1


def test_an_operator_can_autoscale_insights(tmp_path: Path) -> None:
    override = tmp_path / "site.yaml"
    override.write_text("services: {insights: {replicas: 3, autoscaling: {minReplicas: 2, maxReplicas: 4, "
                        "targetCPUUtilizationPercentage: 70}}}\n")  # fmt: skip
    _, docs = _render(tmp_path, "-f", str(override))
    assert _by_kind(docs, "Deployment")["insights"]["spec"]["replicas"] == 3
    assert _by_kind(docs, "HorizontalPodAutoscaler")["insights"]["spec"]["maxReplicas"] == 4
