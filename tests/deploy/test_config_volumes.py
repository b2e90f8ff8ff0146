"""The ConfigMaps of deploy/k8s/base as a pod sees them: the copies in base/ are the repository's
config/ byte for byte, the tasks volume's ``items`` lay the flat ConfigMap keys out as
``tasks.toml``, ``prompts/*.md``, ``schemas/*.json``, and that directory, written the way the
kubelet writes a ConfigMap volume, is loaded by the service's own loaders, then followed through
an edit (``kubectl edit configmap``) by the reloaders."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from management_api.proxy.limits_config import LimitsReloader, load_limits
from management_api.tasks.config import load_tasks
from management_api.tasks.reloader import TasksReloader
from tests.configmap_volume import ConfigMapVolume
from tests.deploy.test_manifests import K8S, NODE_OVERLAYS, env_of, find, service_container
from tests.service_harness import ROOT

CONFIG = ROOT / "config"
BASE = K8S / "base"
REFRESH = "run `make k8s-config` (docs/operations.md, 'Several nodes')"


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def shipped_tasks_files() -> dict[str, bytes]:
    files = {"tasks.toml": (CONFIG / "tasks.toml").read_bytes()}
    for folder in ("prompts", "schemas"):
        files.update({f"{folder}/{k}": v for k, v in tree(CONFIG / folder).items()})
    return files


def volume(overlay: str, name: str) -> dict:
    spec = find(overlay, "DaemonSet")["spec"]["template"]["spec"]
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    return found["configMap"]


def mounted_files(overlay: str, name: str) -> dict[str, str]:
    """What the kubelet puts into the volume's directory: each item's key at its path, or
    every key at its own name when the volume lists no items."""
    source = volume(overlay, name)
    data = find(overlay, "ConfigMap", source["name"])["data"]
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    return {item["path"]: data[item["key"]] for item in items}


def test_base_tasks_copies_are_the_repositorys_config_byte_for_byte():
    copies, shipped = tree(BASE / "tasks"), shipped_tasks_files()
    assert sorted(copies) == sorted(shipped), REFRESH
    for path, content in shipped.items():
        assert copies[path] == content, f"deploy/k8s/base/tasks/{path} differs: {REFRESH}"


@pytest.mark.parametrize("overlay", ("base", *NODE_OVERLAYS))
def test_tasks_volume_items_mount_every_key_where_the_tasks_file_looks(overlay):
    source = volume(overlay, "tasks")
    data = find(overlay, "ConfigMap", source["name"])["data"]
    items = source["items"]
    keys = [item["key"] for item in items]
    # Every key is mounted (an unlisted key would silently not appear) and every item's key
    # exists (a missing one keeps the pod from starting).
    assert sorted(keys) == sorted(data) and len(set(keys)) == len(keys)
    for item in items:
        path = PurePosixPath(item["path"])
        assert not path.is_absolute() and ".." not in path.parts, item
        # The key names its path: prompts.judge.md -> prompts/judge.md.
        assert item["key"] == str(path).replace("/", ".", 1), item
    mounted = {item["path"]: data[item["key"]] for item in items}
    # Each path gets the file of that path in base/tasks/ (the copies checked above).
    assert {p: t.encode() for p, t in mounted.items()} == tree(BASE / "tasks")


def test_rendered_config_volumes_load_with_the_services_loaders(tmp_path):
    container = service_container("jetson")
    env = env_of(container)
    limits_file, tasks_file = Path(env["LLM_LIMITS_FILE"]), Path(env["LLM_TASKS_FILE"])

    limits_volume = ConfigMapVolume(tmp_path / "limits")
    limits_volume.write(mounted_files("jetson", "limits"))
    limits = load_limits(limits_volume.path(limits_file.name))
    assert limits.models == load_limits(CONFIG / "limits.toml").models

    files = mounted_files("jetson", "tasks")
    tasks_volume = ConfigMapVolume(tmp_path / "tasks")
    tasks_volume.write(files)
    # The real loader: every template and schema path in the tasks file resolves in the volume.
    in_pod = load_tasks(tasks_volume.path(tasks_file.name))
    in_repo = load_tasks(CONFIG / "tasks.toml")
    assert in_pod.tasks.keys() == in_repo.tasks.keys() and len(in_pod.tasks) >= 5
    for name, task in in_pod.tasks.items():
        assert task.template.text == in_repo.tasks[name].template.text
        assert task.schema == in_repo.tasks[name].schema
        assert Path(task.template.source).is_relative_to(tasks_volume.current_dir())


def test_kubectl_edit_of_a_prompt_or_a_limit_reaches_the_reloaders(tmp_path):
    """`kubectl edit configmap llm-service-tasks` changing one prompt, and the limits likewise:
    the kubelet publishes a new version with the ..data swap, the reloaders apply it once
    settled, and a broken edit keeps the last good config."""
    files = mounted_files("jetson", "tasks")
    tasks_volume = ConfigMapVolume(tmp_path / "tasks")
    tasks_volume.write(files)
    tasks = TasksReloader(tasks_volume.path("tasks.toml"))
    tasks.load_initial()
    name, task = next((n, t) for n, t in tasks.current.tasks.items() if t.template.fields)
    prompt = Path(task.template.source).relative_to(tasks_volume.current_dir()).as_posix()
    edited = dict(files, **{prompt: "Edited in the cluster: {{input}}\n"})
    tasks_volume.write(edited)
    assert tasks.check() is False  # settling
    assert tasks.check() is True
    assert tasks.current.tasks[name].template.text == "Edited in the cluster: {{input}}\n"
    broken = edited["tasks.toml"].replace('strategy = "', 'strategy = "x', 1)
    tasks_volume.write(dict(edited, **{"tasks.toml": broken}))
    tasks.check()
    assert tasks.check() is False and tasks.last_error
    assert tasks.current.tasks[name].template.text == "Edited in the cluster: {{input}}\n"

    limits_files = mounted_files("jetson", "limits")
    limits_volume = ConfigMapVolume(tmp_path / "limits")
    limits_volume.write(limits_files)
    applied: list = []
    limits = LimitsReloader(limits_volume.path("limits.toml"), applied.append)
    limits.load_initial()
    text = limits_files["limits.toml"]
    assert limits.current.global_max_concurrency == 0
    edited = re.sub(r"(\[global\][^\[]*?)max_concurrency = 0", r"\1max_concurrency = 3", text)
    assert edited != text
    limits_volume.write({"limits.toml": edited})
    assert limits.check() is False
    assert limits.check() is True
    assert applied[-1].global_max_concurrency == 3
