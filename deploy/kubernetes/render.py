"""Render the Kubernetes manifests of the six services from values.yaml (and the operator's overrides).

    python3 deploy/kubernetes/render.py [-f my-values.yaml ...] [--secret-from-env FILE] > shuidian.yaml
    kubectl apply -f shuidian.yaml

Plain Python and PyYAML instead of a Helm chart: the manifests are data built by functions, rendered and
validated the same way on a laptop, in CI and on a machine with no Helm binary (none is packaged for
Debian). What varies between sites lives in values.yaml; everything else is the platform's rule:
probes on /healthz and /readyz, requests and limits, a PodDisruptionBudget per service, autoscaling of
the stateless services, collector shards as a StatefulSet (its pod name is its stable MQTT identity and
its ordinal its shard), credentials only from a Secret, and NetworkPolicies that let only the gateway be
reached from outside and each backend only by its callers. Migrations run at each start under a PostgreSQL
advisory lock, so replicas starting together, old and new, are safe (docs/deploy.md, Upgrades).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
STATELESS = ("gateway", "billing", "control", "alarm", "insights")
SERVICES = (*STATELESS, "collector")
PART_OF = "shuidian"
# Backends called over HTTP by another backend besides the gateway (which calls every one): its NetworkPolicy
# admits them too. Insights reads rooms and tariffs from billing.
OTHER_CALLERS = {"billing": ("insights",)}

Manifest = dict[str, Any]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def labels(service: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": service, "app.kubernetes.io/part-of": PART_OF}


def meta(values: dict[str, Any], name: str, service: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "namespace": values["namespace"]}
    found["labels"] = labels(service) if service else {"app.kubernetes.io/part-of": PART_OF}
    return found


def secret_env(values: dict[str, Any], name: str, key: str | None = None) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": values["secretName"], "key": key or name}}}


def url(values: dict[str, Any], service: str) -> str:
    return f"http://{service}:{values['services'][service]['port']}"


def environment(values: dict[str, Any], service: str) -> list[dict[str, Any]]:
    prefix = service.upper()
    env: list[dict[str, Any]] = [
        secret_env(values, "DATABASE_URL"),
        secret_env(values, "MQTT_URL", f"MQTT_URL_{prefix}"),
        secret_env(values, "SERVICE_TOKEN_SECRET"),
        {"name": "SHUIDIAN_ENVIRONMENT", "value": values["environment"]},
        {"name": "TZ", "value": values["timezone"]},
        # The pod's name is its instance id: its MQTT client id and persistent session.
        {"name": f"{prefix}_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if service == "gateway":
        env += [secret_env(values, f"GATEWAY_{key}") for key in ("STAFF_API_KEY", "JWT_SECRET", "WEBHOOK_SECRET_KEY")]
        env += [
            {"name": f"GATEWAY_{other.upper()}_URL", "value": url(values, other)}
            for other in SERVICES
            if other != service
        ]
    if service == "alarm":
        env.append(secret_env(values, "ALARM_WEBHOOK_SECRET"))
    if service == "insights":
        env.append({"name": "INSIGHTS_BILLING_URL", "value": url(values, "billing")})
    if service == "collector":
        env += [
            {"name": "COLLECTOR_SHARD_COUNT", "value": str(values["services"]["collector"]["shards"])},
            {
                "name": "COLLECTOR_SHARD_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}},
            },
        ]
    return env


def pod_template(values: dict[str, Any], service: str) -> dict[str, Any]:
    spec = values["services"][service]
    port = spec["port"]
    probe = {"httpGet": {"port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    container = {
        "name": service,
        "image": f"{values['image']['registry']}/{service}:{values['image']['tag']}",
        "imagePullPolicy": values["image"]["pullPolicy"],
        "ports": [{"name": "http", "containerPort": port}],
        "env": environment(values, service),
        "resources": spec["resources"],
        "startupProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "failureThreshold": 30},
        "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "http"}, "failureThreshold": 3},
        "readinessProbe": {**probe, "httpGet": {"path": "/readyz", "port": "http"}, "failureThreshold": 2},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if service != "collector":  # the collector's /data is its persistent volume claim
        volumes.append({"name": "data", "emptyDir": {}})
    return {
        "metadata": {
            "labels": labels(service),
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)},
        },
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationGracePeriodSeconds": 45,
            "automountServiceAccountToken": False,
            "containers": [container],
            "volumes": volumes,
        },
    }


def workload(values: dict[str, Any], service: str) -> Manifest:
    spec = values["services"][service]
    selector = {"matchLabels": labels(service)}
    if service == "collector":
        storage = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec["storage"]["size"]}}}
        if spec["storage"].get("storageClassName"):
            storage["storageClassName"] = spec["storage"]["storageClassName"]
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta(values, service, service),
            "spec": {
                "serviceName": service,
                "replicas": spec["shards"],
                # Shards are independent: start and replace them in parallel, one at a time on upgrades.
                "podManagementPolicy": "Parallel",
                "selector": selector,
                "template": pod_template(values, service),
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": storage}],
            },
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(values, service, service),
        "spec": {
            "replicas": spec["replicas"],
            "selector": selector,
            # Old and new replicas run side by side during a rolling upgrade (expand/contract migrations).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(values, service),
        },
    }


def service_object(values: dict[str, Any], service: str) -> Manifest:
    spec: dict[str, Any] = {
        "selector": labels(service),
        "ports": [{"name": "http", "port": values["services"][service]["port"], "targetPort": "http"}],
    }
    if service == "gateway":
        spec["type"] = values["gatewayService"]["type"]
    if service == "collector":
        spec["clusterIP"] = "None"  # the StatefulSet's governing service: collector-0.collector, …
        spec["publishNotReadyAddresses"] = False
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(values, service, service), "spec": spec}


def disruption_budget(values: dict[str, Any], service: str) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(values, service, service),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(service)}},
    }


def autoscaler(values: dict[str, Any], service: str) -> Manifest:
    scaling = values["services"][service]["autoscaling"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(values, service, service),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": service},
            "minReplicas": scaling["minReplicas"],
            "maxReplicas": scaling["maxReplicas"],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling["targetCPUUtilizationPercentage"],
                        },
                    },
                }
            ],
        },
    }


def network_policies(values: dict[str, Any]) -> list[Manifest]:
    """Deny all ingress in the namespace, then: the gateway from outside, each backend from the gateway and
    OTHER_CALLERS, /metrics from the monitoring namespace."""
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": values["monitoringNamespace"]}}}
    policies: list[Manifest] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(values, "default-deny-ingress"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    ]
    for service in SERVICES:
        port = {"protocol": "TCP", "port": values["services"][service]["port"]}
        if service == "gateway":
            sources: list[dict[str, Any]] = [
                {"ports": [port]} | ({"from": values["gatewayIngressFrom"]} if values["gatewayIngressFrom"] else {})
            ]
        else:
            callers = ("gateway", *OTHER_CALLERS.get(service, ()))
            sources = [
                {"from": [*({"podSelector": {"matchLabels": labels(c)}} for c in callers), monitoring], "ports": [port]}
            ]
        if service == "gateway":
            sources.append({"from": [monitoring], "ports": [port]})
        policies.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": meta(values, f"{service}-ingress", service),
                "spec": {
                    "podSelector": {"matchLabels": labels(service)},
                    "policyTypes": ["Ingress"],
                    "ingress": sources,
                },
            }
        )
    return policies


def ingress(values: dict[str, Any]) -> Manifest:
    rule = {
        "host": values["ingress"]["host"],
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "gateway", "port": {"name": "http"}}},
                }
            ]
        },
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta(values, "gateway", "gateway"),
        "spec": {
            "ingressClassName": values["ingress"]["className"],
            "tls": [{"hosts": [values["ingress"]["host"]], "secretName": values["ingress"]["tlsSecretName"]}],
            "rules": [rule],
        },
    }


def secret(values: dict[str, Any], env_file: Path) -> Manifest:
    pairs = [
        line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and not line.startswith("#")
    ]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(values, values["secretName"]),
        "type": "Opaque",
        "stringData": dict(pairs),
    }


def render(values: dict[str, Any], secret_env_file: Path | None = None) -> list[Manifest]:
    manifests: list[Manifest] = [secret(values, secret_env_file)] if secret_env_file else []
    for service in SERVICES:
        manifests += [workload(values, service), service_object(values, service), disruption_budget(values, service)]
        if service in STATELESS and values["services"][service].get("autoscaling"):
            manifests.append(autoscaler(values, service))
    manifests += network_policies(values)
    if values["ingress"]["enabled"]:
        manifests.append(ingress(values))
    return manifests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="overrides, applied in order")
    parser.add_argument("--secret-from-env", type=Path, help="also render the Secret from this KEY=value file")
    args = parser.parse_args()
    values = yaml.safe_load((HERE / "values.yaml").read_text())
    for path in args.values:
        values = merge(values, yaml.safe_load(path.read_text()) or {})
    yaml.safe_dump_all(render(values, args.secret_from_env), sys.stdout, sort_keys=False, allow_unicode=True)


if __name__ == "__main__":
    main()
