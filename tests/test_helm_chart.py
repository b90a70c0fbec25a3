"""The Helm chart (helm/jobgate), checked without a cluster: `helm lint --strict`, `helm
template` over a matrix of values (parsed, and held against the code that the manifests
must agree with: the settings, spec.network_policies, the profile loader, the metrics
registry, helm/rbac.yaml), the schema refusing bad values, the README and the versions.
Helm comes from the test cluster's binaries (hack/k8s/build.sh); nothing here talks to a
cluster."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth.keys import KeyRing, hash_key
from gateway.config.profiles import Profile, load_profiles
from gateway.config.settings import KubernetesSettings, Settings, variables
from gateway.executors.kubernetes.spec import network_policies
from gateway.metrics.registry import Metrics
from gateway.models import Status
from tests.cluster.binaries import find_bin_dir
from tests.support import ROOT

CHART = ROOT / "helm" / "jobgate"
NAMESPACE = "jobgate"
KEY = "jg_chart_test_key_0123456789"
ENTRY = f"acme:{hash_key(KEY)}"
# The labels that name a release: helm/rbac.yaml, made for any, has none of them.
RELEASE_LABELS = ("helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version")
MONITORING = "monitoring.coreos.com/v1"

Doc = dict[str, Any]


@dataclass
class Rendered:
    docs: list[Doc]

    def all(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Doc:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {self.kinds()}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in self.docs)

    @property
    def container(self) -> Doc:
        return self.pod["containers"][0]

    @property
    def pod(self) -> Doc:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def env(self) -> dict[str, Doc]:
        entries = self.container["env"]
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"duplicate env entries: {names}"
        return {e["name"]: e for e in entries}

    def value(self, name: str) -> str:
        return self.env[name]["value"]


@dataclass
class Helm:
    path: Path
    env: dict[str, str]
    work: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.path), *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)

    def template_args(self, values: Doc, release: str, api_versions: tuple[str, ...]
                      ) -> list[str]:
        values_file = self.work / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.json"
        values_file.write_text(json.dumps(values))
        args = ["template", release, str(CHART), "-n", NAMESPACE, "-f", str(values_file)]
        for api in api_versions:
            args += ["--api-versions", api]
        return args

    def template(self, values: Doc | None = None, *, release: str = "jobgate",
                 api_versions: tuple[str, ...] = ()) -> Rendered:
        done = self.run(*self.template_args(with_key(values), release, api_versions))
        assert done.returncode == 0, done.stderr
        return Rendered([d for d in yaml.safe_load_all(done.stdout) if d])

    def refuses(self, values: Doc) -> str:
        done = self.run(*self.template_args(values, "jobgate", ()))
        assert done.returncode != 0, f"rendered although it should not:\n{done.stdout[:400]}"
        return done.stderr


def with_key(values: Doc | None) -> Doc:
    values = copy.deepcopy(values or {})
    values.setdefault("auth", {}).setdefault("apiKeys", [ENTRY])
    if values["auth"].get("existingSecret"):
        values["auth"]["apiKeys"] = []
    return values


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    path = find_bin_dir(build=False) / "helm"
    work = tmp_path_factory.mktemp("helm")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
           "HELM_CACHE_HOME": str(work / "cache"), "HELM_CONFIG_HOME": str(work / "config"),
           "HELM_DATA_HOME": str(work / "data"),
           # No cluster: a kubeconfig that does not exist.
           "KUBECONFIG": str(work / "no-kubeconfig")}
    return Helm(path, env, work)


@pytest.fixture(scope="module")
def defaults(helm: Helm) -> Rendered:
    return helm.template()


def portable(doc: Doc) -> Doc:
    """A manifest without what names its release: the namespace, the release's labels."""
    doc = copy.deepcopy(doc)
    meta = doc["metadata"]
    meta.pop("namespace", None)
    labels = {k: v for k, v in meta.get("labels", {}).items()
              if k not in RELEASE_LABELS
              and not (k == "app.kubernetes.io/managed-by" and v == "Helm")}
    meta["labels"] = labels
    for subject in doc.get("subjects", []):
        subject.pop("namespace", None)
    return doc


def rules(rendered: Rendered) -> dict[str, list[str]]:
    return {f"{r['apiGroups'][0]}/{r['resources'][0]}": r["verbs"]
            for r in rendered.one("Role")["rules"]}


def chart_version() -> dict[str, str]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# -- lint and versions ------------------------------------------------------------------


EVERYTHING_ON: Doc = {
    "autoscaling": {"enabled": True},
    "ingress": {"enabled": True, "tls": [{"hosts": ["jobgate.example.com"],
                                          "secretName": "tls"}]},
    "networkPolicy": {"enabled": True, "restrictEgress": True,
                      "extraEgress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "workers": {"egressCidrs": ["10.0.42.0/24"], "extraEgress": [{"ports": [{"port": 53}]}]},
}


@pytest.mark.parametrize("values", [None, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_helm_lint_strict(helm: Helm, values: Doc | None) -> None:
    path = helm.work / "lint-values.json"
    path.write_text(json.dumps(with_key(values)))
    done = helm.run("lint", "--strict", str(CHART), "-f", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_versions_are_the_project_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = chart_version()
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == project
    assert chart["appVersion"] == project


# -- the gateway Deployment -------------------------------------------------------------


def test_the_gateway_pods_are_hardened(defaults: Rendered) -> None:
    pod, container = defaults.pod, defaults.container
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert "useradd --uid 10001" in (ROOT / "Dockerfile").read_text()
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The data dir is writable although the root is not.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[defaults.value("JOBGATE_DATA_DIR")]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # A Service named jobgate would inject JOBGATE_PORT=tcp://… through service links.
    assert pod["enableServiceLinks"] is False


def test_probes_replicas_grace_and_spreading(defaults: Rendered) -> None:
    deployment = defaults.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    container, pod = defaults.container, defaults.pod
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    grace = float(defaults.value("JOBGATE_SHUTDOWN_GRACE_S"))
    assert grace == 20
    assert pod["terminationGracePeriodSeconds"] > grace
    anti = pod["affinity"]["podAntiAffinity"]
    preferred = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert container["image"] == f"docker.io/jobgate/gateway:{chart_version()['appVersion']}"


def test_the_pods_carry_the_labels_the_workers_policy_admits(defaults: Rendered) -> None:
    labels = defaults.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = dict(e.split("=", 1) for e in KubernetesSettings().gateway_selector)
    assert selector == {"app.kubernetes.io/name": "jobgate",
                        "app.kubernetes.io/component": "gateway"}
    assert selector.items() <= labels.items()
    assert sorted(defaults.value("JOBGATE_K8S_GATEWAY_SELECTOR").split(",")) == \
        sorted(KubernetesSettings().gateway_selector)
    service = defaults.one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = defaults.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_env_is_a_kubernetes_gateway(defaults: Rendered) -> None:
    env = defaults.env
    assert defaults.value("JOBGATE_EXECUTOR") == "kubernetes"
    assert defaults.value("JOBGATE_STORAGE") == "s3"
    assert defaults.value("JOBGATE_HOST") == "0.0.0.0"
    assert defaults.value("JOBGATE_K8S_NAMESPACE") == NAMESPACE
    assert env["JOBGATE_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert defaults.value("JOBGATE_WORKER_GATEWAY_URL") == \
        f"http://jobgate.{NAMESPACE}.svc.cluster.local:8080"
    assert defaults.one("Service")["metadata"]["name"] == "jobgate"
    assert defaults.value("JOBGATE_K8S_MANAGE_NETWORK_POLICY") == "false"
    assert env["JOBGATE_CALLBACK_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "jobgate", "key": "callback-secret"}
    assert "AWS_ACCESS_KEY_ID" not in env  # no keys given: the AWS chain (IRSA)
    assert defaults.pod["serviceAccountName"] == \
        defaults.one("ServiceAccount")["metadata"]["name"]


def as_environment(rendered: Rendered) -> dict[str, str]:
    """The container's environment as the gateway would see it, secrets stood in for."""
    out = {}
    for name, entry in rendered.env.items():
        if "value" in entry:
            out[name] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            out[name] = "jobgate-7d9c-abcde"
        else:
            out[name] = "a-secret-from-the-secret"
    return out


@pytest.fixture
def read_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], Settings]:
    def read(environment: dict[str, str]) -> Settings:
        for name in list(os.environ):
            if name.startswith("JOBGATE_"):
                monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return Settings()
    return read


def test_the_settings_accept_the_env(defaults: Rendered,
                                     read_settings: Callable[[dict[str, str]], Settings],
                                     tmp_path: Path) -> None:
    settings = read_settings(as_environment(defaults))
    assert settings.executor == "kubernetes" and settings.storage == "s3"
    assert not settings.is_loopback_bind
    assert settings.kubernetes.namespace == NAMESPACE
    assert settings.kubernetes.manage_network_policy is False
    assert settings.kubernetes.egress_cidrs == []
    assert settings.s3.endpoint == "" and settings.s3.bucket == "jobgate"
    # The API key file the gateway reads holds the hash, and it parses.
    secret = defaults.one("Secret", "jobgate")["data"]
    keys = tmp_path / "api-keys"
    keys.write_bytes(base64.b64decode(secret["api-keys"]))
    assert KeyRing.load([], keys).tenant_for(KEY) == "acme"
    assert len(base64.b64decode(secret["callback-secret"])) >= 32
    auth = next(v for v in defaults.pod["volumes"] if v["name"] == "auth")
    mount = next(m for m in defaults.container["volumeMounts"] if m["name"] == "auth")
    assert str(settings.api_keys_file) == f"{mount['mountPath']}/api-keys"
    assert auth["secret"]["secretName"] == "jobgate"


def test_extra_env_reaches_every_setting(helm: Helm) -> None:
    names = variables()
    rendered = helm.template({"extraEnv": [{"name": n, "value": "x"} for n in names]})
    env = rendered.env  # asserts no name twice
    assert set(names) <= set(env)
    # One the chart sets is replaced, not doubled.
    assert env["JOBGATE_LOG_LEVEL"] == {"name": "JOBGATE_LOG_LEVEL", "value": "x"}


# -- profiles ---------------------------------------------------------------------------


def catalogue(rendered: Rendered, tmp_path: Path) -> dict[str, Profile]:
    configmap = rendered.one("ConfigMap", "jobgate-profiles")
    path = tmp_path / "profiles.toml"
    path.write_text(configmap["data"]["profiles.toml"])
    mounted = next(m for m in rendered.container["volumeMounts"] if m["name"] == "profiles")
    assert rendered.value("JOBGATE_PROFILES") == f"{mounted['mountPath']}/profiles.toml"
    return {p.name: p for p in load_profiles(path, check_installed=False).all()}


def test_the_default_profiles_are_the_built_in_ones(defaults: Rendered, tmp_path: Path) -> None:
    profiles = catalogue(defaults, tmp_path)
    built_in = {p.name: p for p in load_profiles(None, check_installed=False).all()}
    version = chart_version()["appVersion"]
    assert sorted(profiles) == ["bash", "node20", "python3.11"]
    for name, profile in profiles.items():
        assert profile.image == f"docker.io/jobgate/runtime-{name}:{version}"
        assert profile.model_dump(exclude={"image"}) == \
            built_in[name].model_dump(exclude={"image"})


def test_profiles_merge_remove_and_add(helm: Helm, tmp_path: Path) -> None:
    rendered = helm.template({
        "runtimeImages": {"repositoryPrefix": "registry.example/jg/rt-", "tag": "7"},
        "profiles": {"node20": None,
                     "python3.11": {"pool": {"min": 5}, "request_cpu": 0.25},
                     "r": {"image": "registry.example/r:4", "language": "r",
                           "command": ["Rscript", "{entrypoint}"],
                           "default_entrypoint": "main.R", "network": True}}})
    profiles = catalogue(rendered, tmp_path)
    assert sorted(profiles) == ["bash", "python3.11", "r"]
    assert profiles["python3.11"].pool.min == 5 and profiles["python3.11"].pool.max == 8
    assert profiles["python3.11"].request_cpu == 0.25
    assert profiles["bash"].image == "registry.example/jg/rt-bash:7"
    assert profiles["r"].image == "registry.example/r:4" and profiles["r"].network


def test_the_schema_knows_every_profile_field() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    profile = schema["definitions"]["profile"]["properties"]
    assert set(profile) == set(Profile.model_fields) - {"name"}
    pool = Profile.model_fields["pool"].annotation
    assert set(profile["pool"]["properties"]) == set(pool.model_fields)  # type: ignore[union-attr]


# -- RBAC and the workers' NetworkPolicies -----------------------------------------------


def test_the_chart_owns_the_workers_policies_by_default(defaults: Rendered) -> None:
    chart = [portable(defaults.one("NetworkPolicy", p["metadata"]["name"]))
             for p in network_policies(KubernetesSettings())]
    assert chart == network_policies(KubernetesSettings())
    assert "networking.k8s.io/networkpolicies" not in rules(defaults)


def test_the_policies_follow_egress_cidrs_and_runner_port(helm: Helm) -> None:
    settings = KubernetesSettings(egress_cidrs=["10.0.42.0/24", "10.0.43.7/32"],
                                  runner_port=9000)
    rendered = helm.template({"workers": {"egressCidrs": settings.egress_cidrs,
                                          "runnerPort": 9000}})
    chart = [portable(rendered.one("NetworkPolicy", p["metadata"]["name"]))
             for p in network_policies(settings)]
    assert chart == network_policies(settings)
    assert rendered.value("JOBGATE_K8S_EGRESS_CIDRS") == "10.0.42.0/24,10.0.43.7/32"
    assert rendered.value("JOBGATE_K8S_RUNNER_PORT") == "9000"


def test_extra_worker_egress_is_a_third_policy(helm: Helm) -> None:
    to_minio = {"to": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "minio"}}}], "ports": [{"port": 9000}]}
    rendered = helm.template({"workers": {"extraEgress": [to_minio]}})
    extra = rendered.one("NetworkPolicy", "jobgate-workers-extra-egress")
    assert extra["spec"]["egress"] == [to_minio]
    assert extra["spec"]["podSelector"] == \
        network_policies(KubernetesSettings())[0]["spec"]["podSelector"]


def test_without_the_charts_policies_the_gateway_applies_them(helm: Helm) -> None:
    rendered = helm.template({"workers": {"manageNetworkPolicy": False}})
    assert not [p for p in rendered.all("NetworkPolicy")
                if p["metadata"]["name"].startswith("jobgate-workers-")]
    assert rendered.value("JOBGATE_K8S_MANAGE_NETWORK_POLICY") == "true"
    assert rules(rendered)["networking.k8s.io/networkpolicies"] == ["create", "patch"]


def test_helm_rbac_yaml_is_what_the_chart_renders(helm: Helm) -> None:
    """helm/rbac.yaml (the plain-kubectl path, and the Role the cluster tests run with) is
    kept by hand, with its comments; it must be the chart's RBAC for a release named
    jobgate when the gateway manages the workers' policies and no chart ConfigMap owns
    its Jobs."""
    rendered = helm.template({"workers": {"manageNetworkPolicy": False,
                                          "deleteWithRelease": False}})
    chart = [portable(rendered.one(kind)) for kind in ("ServiceAccount", "Role", "RoleBinding")]
    plain = [d for d in yaml.safe_load_all((ROOT / "helm" / "rbac.yaml").read_text()) if d]
    assert chart == plain
    assert rules(rendered) == {
        "/pods": ["list", "watch", "patch"], "batch/jobs": ["create", "delete"],
        "networking.k8s.io/networkpolicies": ["create", "patch"],
        "coordination.k8s.io/leases": ["get", "list", "create", "update", "delete"]}


def test_the_release_owns_the_workers_by_default(helm: Helm) -> None:
    rendered = helm.template(release="edge")
    assert rendered.value("JOBGATE_K8S_OWNER_CONFIGMAP") == "edge-jobgate-profiles"
    assert rendered.one("ConfigMap", "edge-jobgate-profiles")
    role = rendered.one("Role")
    readable = [r for r in role["rules"] if r["resources"] == ["configmaps"]]
    assert readable == [{"apiGroups": [""], "resources": ["configmaps"],
                         "resourceNames": ["edge-jobgate-profiles"], "verbs": ["get"]}]
    alone = helm.template({"workers": {"deleteWithRelease": False}})
    assert alone.value("JOBGATE_K8S_OWNER_CONFIGMAP") == ""
    assert "/configmaps" not in rules(alone)


def test_another_release_name_keeps_the_gateway_labels(helm: Helm) -> None:
    rendered = helm.template(release="edge")
    assert rendered.one("Deployment")["metadata"]["name"] == "edge-jobgate"
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "jobgate"
    assert labels["app.kubernetes.io/component"] == "gateway"
    assert rendered.value("JOBGATE_WORKER_GATEWAY_URL") == \
        f"http://edge-jobgate.{NAMESPACE}.svc.cluster.local:8080"
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"]["name"] == rendered.one("Role")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "edge-jobgate",
                                    "namespace": NAMESPACE}]


# -- storage and secrets -----------------------------------------------------------------


def test_external_s3_with_existing_secrets(helm: Helm,
                                           read_settings: Callable[[dict[str, str]], Settings]
                                           ) -> None:
    rendered = helm.template({
        "auth": {"existingSecret": "jobgate-auth"},
        "s3": {"endpoint": "http://10.96.0.50:9000", "bucket": "calls", "region": "eu-1",
               "addressing": "path", "createBucket": True,
               "credentials": {"existingSecret": "minio-creds", "accessKeyIdKey": "rootUser",
                               "secretAccessKeyKey": "rootPassword"}},
        "workers": {"egressCidrs": ["10.96.0.50/32"]}})
    assert rendered.all("Secret") == []  # every secret is the operator's
    env = rendered.env
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-creds", "key": "rootUser"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio-creds", "key": "rootPassword"}
    assert env["JOBGATE_CALLBACK_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "jobgate-auth"
    auth = next(v for v in rendered.pod["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == "jobgate-auth"
    settings = read_settings(as_environment(rendered))
    assert settings.s3.endpoint == "http://10.96.0.50:9000"
    assert (settings.s3.bucket, settings.s3.region, settings.s3.create_bucket) == \
        ("calls", "eu-1", True)
    assert settings.kubernetes.egress_cidrs == ["10.96.0.50/32"]


def test_s3_keys_given_inline_land_in_the_charts_secret(helm: Helm) -> None:
    rendered = helm.template({"s3": {"credentials": {"accessKeyId": "AKIA1",
                                                     "secretAccessKey": "s3cr3t"}}})
    data = rendered.one("Secret", "jobgate")["data"]
    assert base64.b64decode(data["AWS_ACCESS_KEY_ID"]) == b"AKIA1"
    assert rendered.env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "jobgate", "key": "AWS_SECRET_ACCESS_KEY"}


def test_irsa_is_a_service_account_annotation(helm: Helm) -> None:
    arn = "arn:aws:iam::123456789012:role/jobgate"
    rendered = helm.template({"serviceAccount": {
        "annotations": {"eks.amazonaws.com/role-arn": arn}}})
    assert rendered.one("ServiceAccount")["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": arn}
    assert "AWS_ACCESS_KEY_ID" not in rendered.env


def test_a_pinned_service_ip_is_the_workers_gateway_url(helm: Helm) -> None:
    rendered = helm.template({"service": {"clusterIP": "10.96.0.40"}})
    assert rendered.one("Service")["spec"]["clusterIP"] == "10.96.0.40"
    assert rendered.value("JOBGATE_WORKER_GATEWAY_URL") == "http://10.96.0.40:8080"
    rendered = helm.template({"config": {"workerGatewayUrl": "http://gw.internal:80"}})
    assert rendered.value("JOBGATE_WORKER_GATEWAY_URL") == "http://gw.internal:80"


# -- optional objects --------------------------------------------------------------------


def test_defaults_render_no_optional_objects(defaults: Rendered) -> None:
    for kind in ("HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PrometheusRule"):
        assert defaults.all(kind) == [], kind
    assert [p["metadata"]["name"] for p in defaults.all("NetworkPolicy")] == [
        "jobgate-workers-default-deny", "jobgate-workers-network-allowed"]


def test_hpa_owns_the_replica_count(helm: Helm) -> None:
    rendered = helm.template({"autoscaling": {"enabled": True, "minReplicas": 3,
                                              "maxReplicas": 12}})
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "jobgate"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert "replicas" not in rendered.one("Deployment")["spec"]


def test_ingress_and_the_gateways_own_policy(helm: Helm) -> None:
    rendered = helm.template({
        "ingress": {"enabled": True, "className": "nginx",
                    "hosts": [{"host": "fn.example.org",
                               "paths": [{"path": "/", "pathType": "Prefix"}]}],
                    "tls": [{"hosts": ["fn.example.org"], "secretName": "fn-tls"}]},
        "networkPolicy": {"enabled": True, "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]}})
    ingress = rendered.one("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "jobgate", "port": {"number": 8080}}
    policy = rendered.one("NetworkPolicy", "jobgate-gateway")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    workers = network_policies(KubernetesSettings())[0]["spec"]["podSelector"]
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": workers}]
    assert policy["spec"]["podSelector"]["matchLabels"] == \
        rendered.one("Deployment")["spec"]["selector"]["matchLabels"]


# -- monitoring ---------------------------------------------------------------------------


def exposed_metrics() -> set[str]:
    """The series names /metrics serves (counters carry _total, histograms three series)."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in suffixes[family.type]}


def label_values() -> dict[str, set[str]]:
    from gateway.api.routes import ROUTES

    return {
        "status": {s.value for s in Status} | {"429"},
        "kind": {"warm", "cold"},  # dispatch/lifecycle.py
        "state": {"idle", "starting", "busy", "queued"},  # api/routes.py: metrics()
        "phase": {"queue", "start", "run", "total"},  # dispatch/lifecycle.py
        "outcome": {"delivered", "refused", "error"},  # callbacks/delivery.py: _attempt
        "route": {r.endpoint.__name__ for r in ROUTES},
    }


def check_queries(exprs: list[str]) -> None:
    known, values = exposed_metrics(), label_values()
    for expr in exprs:
        for name in re.findall(r"\bjobgate_[a-z_]+", expr):
            assert name in known, f"{name} is not a metric jobgate serves: {expr}"
        for label, value in re.findall(r'(\w+)=~?"([^"$]*)"', expr):
            if label in values:
                unknown = set(value.split("|")) - values[label]
                assert not unknown, f"{label}={unknown} never happens: {expr}"


def test_monitoring_needs_the_operators_api(helm: Helm) -> None:
    enabled = {"metrics": {"serviceMonitor": {"enabled": True},
                           "prometheusRule": {"enabled": True}}}
    assert helm.template(enabled).all("ServiceMonitor") == []
    assert helm.template(enabled).all("PrometheusRule") == []
    rendered = helm.template(enabled, api_versions=(MONITORING,))
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics",
                                             "interval": "30s"}]
    rule = rendered.one("PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert sorted(alerts) == ["JobgateCallbackFailures", "JobgateErrorRate",
                              "JobgatePoolDrained", "JobgateQueueFull"]
    assert 'state="idle"' in alerts["JobgatePoolDrained"]
    assert 'status="429"' in alerts["JobgateQueueFull"]
    assert 'status="error"' in alerts["JobgateErrorRate"]
    check_queries(list(alerts.values()))
    assert helm.template(api_versions=(MONITORING,)).all("ServiceMonitor") == []


def test_the_dashboard_shows_real_metrics(defaults: Rendered) -> None:
    configmap = defaults.one("ConfigMap", "jobgate-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["jobgate.json"])
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}
    check_queries([e for panel in exprs.values() for e in panel])
    shown = " ".join(e for panel in exprs.values() for e in panel)
    for series in ("jobgate_invocations_total", "jobgate_invocation_phase_seconds_bucket",
                   "jobgate_worker_starts_total", "jobgate_pool_workers",
                   "jobgate_callback_deliveries_total"):
        assert series in shown, series


# -- refused values ------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "says"), [
    ({"s3": {"addressing": "virtual-host"}}, ["s3/addressing", "path", "virtual"]),
    ({"replicas": 3}, ["replicas"]),
    ({"replicaCount": "two"}, ["replicaCount"]),
    ({"workers": {"egressCidrs": ["10.0.0.1"]}}, ["egressCidrs"]),
], ids=["enum", "unknown-key", "type", "cidr"])
def test_the_schema_refuses_bad_values(helm: Helm, values: Doc, says: list[str]) -> None:
    stderr = helm.refuses(with_key(values))
    assert "schema" in stderr
    for word in says:
        assert word in stderr, stderr


def test_a_key_instead_of_its_hash_is_refused(helm: Helm) -> None:
    stderr = helm.refuses({"auth": {"apiKeys": [f"acme:{KEY}"]}})
    assert "auth/apiKeys/0" in stderr and "pattern" in stderr, stderr


@pytest.mark.parametrize(("values", "says"), [
    ({}, "jobgate keys new"),
    ({"auth": {"apiKeys": [ENTRY]}, "terminationGracePeriodSeconds": 15},
     "must exceed config.shutdownGraceS"),
    ({"auth": {"apiKeys": [ENTRY]}, "s3": {"credentials": {"accessKeyId": "AKIA1"}}},
     "without s3.credentials.secretAccessKey"),
    ({"auth": {"apiKeys": [ENTRY]},
      "workers": {"manageNetworkPolicy": False, "extraEgress": [{"to": []}]}},
     "needs workers.manageNetworkPolicy=true"),
], ids=["no-keys", "grace", "half-credentials", "extra-egress"])
def test_values_wrong_together_are_refused(helm: Helm, values: Doc, says: str) -> None:
    assert says in helm.refuses(values)


# -- docs -----------------------------------------------------------------------------------


def leaf_keys(values: Doc, prefix: str = "") -> Iterator[str]:
    """Dotted paths of values.yaml's leaves (scalars, lists, empty maps); the profiles'
    names are <name>."""
    for key, value in values.items():
        path = "profiles.<name>" if prefix == "profiles." else f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaf_keys(value, f"{path}.")
        else:
            yield path


def test_the_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = sorted({k for k in leaf_keys(values) if f"`{k}`" not in readme})
    assert not missing, f"values missing from helm/jobgate/README.md: {missing}"


def test_notes_say_how_to_reach_it_and_make_a_key(helm: Helm, tmp_path: Path) -> None:
    """NOTES.txt rendered through a copy of the chart (helm template leaves it out)."""
    chart = tmp_path / "jobgate"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.tpl")
    (chart / "templates" / "notes-probe.yaml").write_text(
        'notes: {{ tpl (.Files.Get "notes.tpl") . | toJson }}\n')
    values = helm.work / "notes-values.json"
    values.write_text(json.dumps(with_key(None)))
    done = helm.run("template", "jobgate", str(chart), "-n", NAMESPACE, "-f", str(values),
                    "--show-only", "templates/notes-probe.yaml")
    assert done.returncode == 0, done.stderr
    notes = yaml.safe_load(done.stdout)["notes"]
    assert "jobgate keys new TENANT" in notes
    assert "port-forward svc/jobgate" in notes
    assert f"http://jobgate.{NAMESPACE}.svc.cluster.local:8080" in notes


def test_the_install_examples_render(helm: Helm) -> None:
    """docs/kubernetes.md's worked examples (AWS with IRSA, MinIO in the cluster) are values
    the chart takes."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    install = text[text.index("## Install"):text.index("## RBAC")]
    blocks = re.findall(r"```yaml\n(.*?)```", install, re.S)
    assert len(blocks) == 2
    for block in blocks:
        values = yaml.safe_load(block.replace("<sha256hex>", hash_key(KEY)))
        rendered = helm.template(values)
        assert rendered.value("JOBGATE_WORKER_GATEWAY_URL") == \
            f"http://{values['service']['clusterIP']}:8080"
