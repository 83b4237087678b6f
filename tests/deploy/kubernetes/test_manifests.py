"""deploy/kubernetes: every overlay rendered with kustomize and checked offline.

No cluster runs here. Each overlay is rendered with `kubectl kustomize`, every object is validated
against the Kubernetes OpenAPI schemas (kubernetes-validate), the PodMonitors by hand, and the
invariants the stack relies on are read back from the rendered objects and from the code.
"""

import configparser
import functools
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from service.config import ROOT, GunicornSettings, Settings, WorkerSettings
from service.runtime import capacity
from service.runtime.capacity import ConnectionBudget
from service.runtime.layout import GunicornLayout
from service.stack.probes import Probes

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("small", "production")
# The schemas of the kubectl these manifests are rendered with (1.32).
KUBERNETES_VERSION = "1.32.0"
NAMESPACE = "notes"
PROMETHEUS = {"namespace": "monitoring", "name": "prometheus"}

Object = dict[str, Any]
Pod = dict[str, Any]


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl is not installed (Debian: apt-get install kubernetes-client): the "
            "manifests cannot be rendered"
        )
    return kubectl


@functools.cache
def _render_cached(kubectl: str, directory: Path) -> tuple[Object, ...]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def render(directory: Path) -> tuple[Object, ...]:
    """The objects `kubectl kustomize directory` writes."""
    return _render_cached(_kubectl(), directory)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """Each overlay's name."""
    name: str = request.param
    return name


@pytest.fixture
def objects(overlay: str) -> tuple[Object, ...]:
    """The overlay, rendered."""
    return render(KUBERNETES / "overlays" / overlay)


def find(objects: tuple[Object, ...], kind: str, name: str) -> Object:
    """The one object of `kind` named `name` (a generated ConfigMap by its name before the hash)."""
    found = [
        obj
        for obj in objects
        if obj["kind"] == kind
        and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", obj["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pod_templates(objects: tuple[Object, ...]) -> dict[str, Pod]:
    """Each workload's pod template, by its component label."""
    return {
        obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: obj["spec"][
            "template"
        ]
        for obj in objects
        if obj["kind"] in {"Deployment", "Job"}
    }


def container(pod: Pod, name: str) -> Object:
    """The container `name` of a pod template."""
    (found,) = (c for c in pod["spec"]["containers"] if c["name"] == name)
    spec: Object = found
    return spec


def env(container_spec: Object) -> dict[str, Object]:
    """A container's environment entries by name."""
    return {entry["name"]: entry for entry in container_spec.get("env", [])}


def port_number(pod: Pod, port: int | str) -> int:
    """A port of a pod, given by number or by a container port's name."""
    if isinstance(port, int):
        return port
    numbers = [
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if p.get("name") == port
    ]
    assert len(numbers) == 1, f"port {port!r}: not exactly one container port of that name"
    return int(numbers[0])


def matches(selector: Object, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as these manifests use) selects `labels`."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())


def selected(selector: Object, pods: dict[str, Pod]) -> set[str]:
    """The components whose pods `selector` selects."""
    return {name for name, pod in pods.items() if matches(selector, pod["metadata"]["labels"])}


def cpu_cores(quantity: str) -> float:
    """A CPU quantity ("500m", "2") in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def workers_per_pod(cpu_limit: str) -> int:
    """gunicorn's default worker count in a pod with this CPU limit, by capacity's own code.

    In a pod the cgroup quota is the CPU limit; the node's CPUs (the affinity mask) are
    assumed to be more than that.
    """
    quota = cpu_cores(cpu_limit)
    return capacity.default_workers(capacity.cpus_within(max(64, math.ceil(quota)), quota))


def pgbouncer_ini(objects: tuple[Object, ...]) -> configparser.ConfigParser:
    """The pgbouncer.ini the PgBouncer Deployment mounts."""
    pod = pod_templates(objects)["pgbouncer"]
    (volume,) = (v for v in pod["spec"]["volumes"] if v["name"] == "config")
    config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
    parser = configparser.ConfigParser()
    parser.read_string(config_map["data"]["pgbouncer.ini"])
    return parser


def budget_problems(objects: tuple[Object, ...]) -> list[str]:
    """What does not fit: the app's pools in PgBouncer's clients, PgBouncer's pools in PostgreSQL.

    Both are ConnectionBudget, the arithmetic gunicorn checks at start: on the client side its
    migration and spare connections are headroom for an operator's psql through PgBouncer.
    """
    pods = pod_templates(objects)
    app = container(pods["app"], "app")
    hpa = find(objects, "HorizontalPodAutoscaler", "notes-app")
    pool = {
        name.lower(): entry["value"]
        for name, entry in env(app).items()
        if name in {"DB_POOL_SIZE", "DB_MAX_OVERFLOW"}
    }
    settings = Settings.model_validate(pool)
    ini = pgbouncer_ini(objects)["pgbouncer"]
    limits = find(objects, "ConfigMap", "notes-postgres-limits")["data"]
    pgbouncer_replicas = find(objects, "Deployment", "notes-pgbouncer")["spec"]["replicas"]
    clients = ConnectionBudget(
        workers=hpa["spec"]["maxReplicas"] * workers_per_pod(app["resources"]["limits"]["cpu"]),
        per_worker=settings.db_pool_size + settings.db_max_overflow,
        # All on one PgBouncer: the Service spreads connections at random, and one replica may
        # be restarting.
        max_connections=int(ini["max_client_conn"]),
        reserved=0,
    )
    servers = ConnectionBudget(
        workers=pgbouncer_replicas,
        per_worker=int(ini["default_pool_size"]) + int(ini.get("reserve_pool_size", "0")),
        max_connections=int(limits["max_connections"]),
        reserved=int(limits["reserved_connections"]),
    )
    problems = []
    if clients.needed > clients.available:
        problems.append(f"PgBouncer max_client_conn: {clients.describe()}")
    if servers.needed > servers.available:
        problems.append(f"PostgreSQL max_connections: {servers.describe()}")
    return problems


def test_kubectl_has_kustomize() -> None:
    """The kubectl used renders kustomizations itself (kustomize is built in since 1.14)."""
    result = subprocess.run(
        [_kubectl(), "version", "--client"], capture_output=True, text=True, check=True
    )
    assert "Kustomize Version" in result.stdout


def test_objects_match_the_kubernetes_schemas(objects: tuple[Object, ...]) -> None:
    """Every built-in object is valid, with no unknown field, for the Kubernetes version used."""
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Job", "Service", "HorizontalPodAutoscaler"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_pod_monitors
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_broken_object_fails_the_schema() -> None:
    """The validation can fail: a probe with a misspelled field is rejected."""
    objects = render(KUBERNETES / "overlays" / "small")
    deployment = yaml.safe_load(yaml.safe_dump(find(objects, "Deployment", "notes-app")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_pod_monitors(objects: tuple[Object, ...]) -> None:
    """Each PodMonitor selects one workload's pods and scrapes a port those pods name."""
    pods = pod_templates(objects)
    monitors = [obj for obj in objects if obj["kind"] == "PodMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"notes-app", "notes-proxy"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector"}
        (component,) = selected(monitor["spec"]["selector"], pods)
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
            port_number(pods[component], endpoint["port"])
            assert endpoint["path"] == "/metrics"


def test_app_probes_are_the_apps_routes(objects: tuple[Object, ...]) -> None:
    """Startup and liveness on /healthz, readiness on /readyz, on the port gunicorn binds."""
    pod = pod_templates(objects)["app"]
    app = container(pod, "app")
    routes = set(Probes(readiness=None).routes)  # type: ignore[arg-type]
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    bind_port = int(env(app)["GUNICORN_BIND"]["value"].rpartition(":")[2])
    for probe, path in expected.items():
        assert app[probe]["httpGet"]["path"] == path
        assert path in routes
        assert port_number(pod, app[probe]["httpGet"]["port"]) == bind_port
    # /readyz waits up to READY_TIMEOUT for its checks.
    ready_timeout = WorkerSettings.model_fields["ready_timeout"].default
    assert app["readinessProbe"]["timeoutSeconds"] > ready_timeout


def test_workers_are_left_to_the_cpu_limit(objects: tuple[Object, ...]) -> None:
    """WEB_CONCURRENCY is not set: gunicorn.conf.py counts the CPU limit."""
    app = container(pod_templates(objects)["app"], "app")
    assert "WEB_CONCURRENCY" not in env(app)
    assert "envFrom" not in app


def _pre_stop_seconds(container_spec: Object) -> int:
    command = container_spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_grace_period_covers_pre_stop_and_graceful_timeout(objects: tuple[Object, ...]) -> None:
    """SIGKILL comes only after the endpoints drained and gunicorn's workers finished."""
    pod = pod_templates(objects)["app"]
    app = container(pod, "app")
    overridden = env(app).get("GUNICORN_GRACEFUL_TIMEOUT")
    graceful = (
        int(overridden["value"])
        if overridden
        else GunicornSettings.model_fields["gunicorn_graceful_timeout"].default
    )
    assert pod["spec"]["terminationGracePeriodSeconds"] > _pre_stop_seconds(app) + graceful
    proxy = pod_templates(objects)["proxy"]
    nginx = container(proxy, "nginx")
    assert proxy["spec"]["terminationGracePeriodSeconds"] > _pre_stop_seconds(nginx)


def test_security_context(objects: tuple[Object, ...]) -> None:
    """Every pod: non-root, seccomp RuntimeDefault, read-only root, no capabilities."""
    for component, pod in pod_templates(objects).items():
        pod_context = pod["spec"]["securityContext"]
        assert pod_context["runAsNonRoot"] is True, component
        assert pod_context["runAsUser"] != 0, component
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, component
        assert pod["spec"]["automountServiceAccountToken"] is False, component
        for spec in pod["spec"]["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, spec["name"]
            assert context["readOnlyRootFilesystem"] is True, spec["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, spec["name"]
            assert context.get("runAsUser", 1) != 0, spec["name"]


def _memory_volume_at(pod: Pod, container_spec: Object, path: Path) -> bool:
    """Whether `path` lies on an emptyDir in memory (the deepest mount that holds it)."""
    mounts = [
        m for m in container_spec["volumeMounts"] if path.is_relative_to(Path(m["mountPath"]))
    ]
    if not mounts:
        return False
    mount = max(mounts, key=lambda m: len(Path(m["mountPath"]).parts))
    (volume,) = (v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    return bool(volume.get("emptyDir", {}).get("medium") == "Memory")


def test_metrics_and_heartbeat_dirs_are_in_memory(objects: tuple[Object, ...]) -> None:
    """PROMETHEUS_MULTIPROC_DIR (RUN_DIR/metrics) and worker_tmp_dir are memory emptyDirs."""
    pod = pod_templates(objects)["app"]
    app = container(pod, "app")
    run_dir = Path(env(app)["RUN_DIR"]["value"])
    assert _memory_volume_at(pod, app, GunicornLayout(run_dir).metrics_dir)
    assert _memory_volume_at(pod, app, GunicornLayout(run_dir).ready_dir)
    worker_tmp_dir = re.search(
        r'^\s*worker_tmp_dir = "([^"]+)"', (ROOT / "gunicorn.conf.py").read_text(), re.MULTILINE
    )
    assert worker_tmp_dir is not None
    assert _memory_volume_at(pod, app, Path(worker_tmp_dir[1]))
    assert not _memory_volume_at(pod, app, Path("/app"))


def test_no_inline_secrets(objects: tuple[Object, ...]) -> None:
    """No Secret object; URLs and passwords come from secretKeyRef; the docs name each one."""
    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    for component, pod in pod_templates(objects).items():
        for spec in pod["spec"]["containers"]:
            for name, entry in env(spec).items():
                value = str(entry.get("value", ""))
                assert not re.search(r"://[^/@\s]*@", value), f"{component}: {name} has a userinfo"
                if re.search(r"URL|PASSWORD|SECRET|TOKEN", name):
                    reference = entry["valueFrom"]["secretKeyRef"]
                    assert f"`{reference['name']}`" in docs
                    assert f"`{reference['key']}`" in docs
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                assert f"`{volume['secret']['secretName']}`" in docs
    for config_map in (obj for obj in objects if obj["kind"] == "ConfigMap"):
        for text in config_map.get("data", {}).values():
            assert not re.search(r"password\s*=|://[^/@\s]*@", text, re.IGNORECASE)


def test_the_app_and_the_migration_log_in_as_different_roles(
    objects: tuple[Object, ...],
) -> None:
    """Two roles (docs/security.md): the Job migrates as the owner, the pods serve as the app
    role; each URL from its own key, and the docs say which role each is and how to make them."""
    pods = pod_templates(objects)
    keys = {
        component: env(spec)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"]
        for component, pod in pods.items()
        for spec in pod["spec"]["containers"]
        if "DATABASE_URL" in env(spec)
    }
    (app_key,) = {key for component, key in keys.items() if component.endswith("app")}
    (migrate_key,) = {key for component, key in keys.items() if component.endswith("migrate")}
    assert app_key != migrate_key
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "deploy/postgres/grant-app-role.sql" in docs
    assert "postgresql+asyncpg://notes_app:" in docs


def _peers(rule_peers: list[Object] | None, pods: dict[str, Pod]) -> set[str]:
    """What a list of NetworkPolicy peers admits: components, "prometheus", "dns" or "anyone"."""
    if not rule_peers:
        return {"anyone"}
    names: set[str] = set()
    for peer in rule_peers:
        labels = peer["podSelector"]["matchLabels"]
        if "namespaceSelector" not in peer:
            names |= selected(peer["podSelector"], pods) or {labels["app.kubernetes.io/name"]}
        elif peer["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": PROMETHEUS["namespace"]}
        } and labels == {"app.kubernetes.io/name": PROMETHEUS["name"]}:
            names.add("prometheus")
        elif peer["namespaceSelector"] == {} and labels == {"k8s-app": "kube-dns"}:
            names.add("dns")
        else:
            pytest.fail(f"unexpected peer {peer}")
    return names


def _reachability(
    objects: tuple[Object, ...], direction: str
) -> dict[str, dict[tuple[str, int], set[str]]]:
    """For each component: (direction, port) -> the peers that NetworkPolicies allow."""
    pods = pod_templates(objects)
    allowed: dict[str, dict[tuple[str, int], set[str]]] = {name: {} for name in pods}
    peers_key = "from" if direction == "ingress" else "to"
    for policy in (obj for obj in objects if obj["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        assert spec["policyTypes"], policy["metadata"]["name"]
        targets = selected(spec["podSelector"], pods)
        assert targets, f"{policy['metadata']['name']} selects no pod"
        for rule in spec.get(direction, []):
            peers = _peers(rule.get(peers_key), pods)
            for target in targets:
                for port in rule["ports"]:
                    if direction == "ingress":
                        number = port_number(pods[target], port["port"])
                    else:
                        assert isinstance(port["port"], int), "egress ports by number"
                        number = port["port"]
                    key = (port.get("protocol", "TCP"), number)
                    allowed[target].setdefault(key, set()).update(peers)
    return allowed


def test_network_policies_admit_only_the_intended_peers(objects: tuple[Object, ...]) -> None:
    """Proxy to app's HTTP port; Prometheus to the metrics ports; app to PgBouncer; PgBouncer
    and the migration to PostgreSQL; nothing else (and everything is denied first)."""
    deny = find(objects, "NetworkPolicy", "notes-default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = pod_templates(objects)
    app_port = port_number(pods["app"], "http")
    pgbouncer_port = port_number(pods["pgbouncer"], "postgres")
    assert int(pgbouncer_ini(objects)["pgbouncer"]["listen_port"]) == pgbouncer_port
    assert _reachability(objects, "ingress") == {
        "app": {("TCP", app_port): {"proxy", "prometheus"}},
        "proxy": {
            ("TCP", port_number(pods["proxy"], "http")): {"anyone"},
            ("TCP", port_number(pods["proxy"], "ops")): {"prometheus"},
            ("TCP", port_number(pods["proxy"], "metrics")): {"prometheus"},
        },
        "pgbouncer": {("TCP", pgbouncer_port): {"app"}},
        "migrate": {},
    }
    dns = {("UDP", 53): {"dns"}, ("TCP", 53): {"dns"}}
    assert _reachability(objects, "egress") == {
        "app": {**dns, ("TCP", pgbouncer_port): {"pgbouncer"}},
        "proxy": {**dns, ("TCP", app_port): {"app"}},
        "pgbouncer": {**dns, ("TCP", 5432): {"postgresql"}},
        "migrate": {**dns, ("TCP", 5432): {"postgresql"}},
    }


def test_services_select_their_pods(objects: tuple[Object, ...]) -> None:
    """A Service per component, each selecting that component's pods on a port they name."""
    pods = pod_templates(objects)
    services = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Service"}
    assert set(services) == {"notes-app", "notes-proxy", "notes-pgbouncer"}
    for name, service in services.items():
        (component,) = selected({"matchLabels": service["spec"]["selector"]}, pods)
        assert name == f"notes-{component}"
        for port in service["spec"]["ports"]:
            port_number(pods[component], port["targetPort"])


def test_hpa_targets_the_app_deployment(objects: tuple[Object, ...]) -> None:
    """The HPA scales the app's Deployment on CPU; the Deployment leaves replicas to it."""
    hpa = find(objects, "HorizontalPodAutoscaler", "notes-app")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    deployment = find(objects, "Deployment", target["name"])
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "app"
    )
    assert "replicas" not in deployment["spec"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    # Utilization is relative to the request: every app container must have one.
    for spec in deployment["spec"]["template"]["spec"]["containers"]:
        assert spec["resources"]["requests"]["cpu"]


def test_disruption_budgets_select_app_and_proxy(objects: tuple[Object, ...]) -> None:
    """One PodDisruptionBudget each for the app and the proxy, matching their pods only."""
    pods = pod_templates(objects)
    budgets = [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]
    assert sorted(selected(b["spec"]["selector"], pods).pop() for b in budgets) == [
        "app",
        "proxy",
    ]
    for budget in budgets:
        assert len(selected(budget["spec"]["selector"], pods)) == 1


def test_overlay_sizes() -> None:
    """small: 1-2 app pods; production: more pods, bigger limits."""
    small, production = (render(KUBERNETES / "overlays" / name) for name in OVERLAYS)

    def hpa(objects: tuple[Object, ...]) -> tuple[int, int]:
        spec = find(objects, "HorizontalPodAutoscaler", "notes-app")["spec"]
        return spec["minReplicas"], spec["maxReplicas"]

    def cpu(objects: tuple[Object, ...]) -> float:
        app = container(pod_templates(objects)["app"], "app")
        return cpu_cores(app["resources"]["limits"]["cpu"])

    assert hpa(small) == (1, 2)
    assert hpa(production)[0] > hpa(small)[1]
    assert cpu(production) > cpu(small)
    for objects in (small, production):
        assert {obj["metadata"].get("namespace") for obj in objects} == {NAMESPACE}


def test_proxy_renders_the_repositorys_nginx_conf(objects: tuple[Object, ...]) -> None:
    """The base's nginx.conf is the repository's, and the proxy fills every placeholder of it."""
    template = (ROOT / "nginx.conf").read_text()
    assert (KUBERNETES / "base" / "nginx.conf").read_text() == template, (
        "cp nginx.conf deploy/kubernetes/base/nginx.conf"
    )
    pods = pod_templates(objects)
    nginx = container(pods["proxy"], "nginx")
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", template))
    assert placeholders <= set(env(nginx))
    script = nginx["command"][-1]
    substituted = re.search(r"envsubst '([^']*)'", script)
    assert substituted is not None
    assert set(re.findall(r"\$\{([A-Z_]+)\}", substituted[1])) == placeholders
    host, _, port = env(nginx)["APP_UPSTREAM"]["value"].partition(":")
    service = find(objects, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert port_number(pods["proxy"], "http") == int(env(nginx)["HTTP_PORT"]["value"])
    assert port_number(pods["proxy"], "ops") == int(env(nginx)["OPS_PORT"]["value"])


def test_plain_prometheus_scrape_config(objects: tuple[Object, ...]) -> None:
    """Without the operator: the same targets as the PodMonitors, in the overlay's namespace."""
    pods = pod_templates(objects)
    config_map = find(objects, "ConfigMap", "notes-prometheus-scrape")
    config = yaml.safe_load(config_map["data"]["prometheus-scrape.yml"])
    kept: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        (discovery,) = job["kubernetes_sd_configs"]
        assert discovery["role"] == "pod"
        assert discovery["namespaces"]["names"] == [NAMESPACE]
        keep = {
            rule["source_labels"][0]: rule["regex"]
            for rule in job["relabel_configs"]
            if rule.get("action") == "keep"
        }
        component = keep["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
        port = keep["__meta_kubernetes_pod_container_port_name"]
        kept.add((component, port_number(pods[component], port)))
    monitored = {
        (
            selected(monitor["spec"]["selector"], pods).pop(),
            port_number(pods[selected(monitor["spec"]["selector"], pods).pop()], endpoint["port"]),
        )
        for monitor in objects
        if monitor["kind"] == "PodMonitor"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]
    }
    assert kept == monitored


def test_workers_per_pod_follow_usable_cpus() -> None:
    """The CPU limit rounds up, and a pod runs two workers at least."""
    assert [workers_per_pod(cpu) for cpu in ("250m", "1", "1500m", "4")] == [2, 2, 2, 4]


def test_connection_budget_fits(objects: tuple[Object, ...]) -> None:
    """At the HPA's maximum, the app's pools fit PgBouncer, and PgBouncer's fit PostgreSQL."""
    assert budget_problems(objects) == []


def _patched_production(tmp_path: Path, patch: str) -> tuple[Object, ...]:
    production = os.path.relpath(KUBERNETES / "overlays" / "production", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {production}\n"
        f"patches:\n{patch}"
    )
    return render(tmp_path)


def _patches() -> Iterator[tuple[str, str, str]]:
    yield (
        "HorizontalPodAutoscaler",
        "notes-app",
        "- op: replace\n  path: /spec/maxReplicas\n  value: 100",
    )
    yield ("Deployment", "notes-pgbouncer", "- op: replace\n  path: /spec/replicas\n  value: 10")


@pytest.mark.parametrize(
    ("kind", "name", "operations", "rejected"),
    [
        (*patch, reason)
        for patch, reason in zip(
            _patches(), ["PgBouncer max_client_conn", "PostgreSQL max_connections"], strict=True
        )
    ],
    ids=["hpa-max-100", "pgbouncer-replicas-10"],
)
def test_connection_budget_rejects_a_production_too_big(
    tmp_path: Path, kind: str, name: str, operations: str, rejected: str
) -> None:
    """Production with 100 app pods, or 10 PgBouncers, does not fit: the check says which."""
    indented = "\n".join("      " + line for line in operations.splitlines())
    patch = f"  - target:\n      kind: {kind}\n      name: {name}\n    patch: |-\n{indented}\n"
    problems = budget_problems(_patched_production(tmp_path, patch))
    assert len(problems) == 1
    assert problems[0].startswith(rejected)


def test_the_your_app_overlay_serves_another_app_under_its_own_name() -> None:
    """overlays/your-app: the example project's image, APP/APP_PATH/MIGRATIONS/STACK_NAME for
    the app and the migration Job, every object in its namespace under its prefix, and the
    proxy pointed at the renamed app Service."""
    objects = render(KUBERNETES / "overlays" / "your-app")
    for obj in objects:
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["name"].startswith("inventory-"), obj["metadata"]["name"]
        assert obj["metadata"].get("namespace", "inventory") == "inventory"
    pods = pod_templates(objects)
    knobs = {
        "APP_PATH": "examples/inventory",
        "MIGRATIONS": "examples/inventory/alembic.ini",
        "STACK_NAME": "inventory",
    }
    app = container(pods["app"], "app")
    migrate = container(pods["migrate"], "migrate")
    assert {**knobs, "APP": "inventory.main:app"}.items() <= plain_env(app).items()
    assert knobs.items() <= plain_env(migrate).items()
    assert app["image"] == migrate["image"] == "registry.example.com/inventory-app:1.2.0"
    assert migrate["command"] == ["python", "-m", "service.stack.migrate"]
    service = find(objects, "Service", "inventory-notes-app")
    port = service["spec"]["ports"][0]["port"]
    upstream = plain_env(container(pods["proxy"], "nginx"))["APP_UPSTREAM"]
    assert upstream == f"inventory-notes-app:{port}"


def plain_env(spec: Object) -> dict[str, str]:
    """A container's environment variables with literal values."""
    return {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}


def test_the_release_order_selects_the_migration_job_alone(objects: tuple[Object, ...]) -> None:
    """docs/kubernetes.md applies `-l app.kubernetes.io/component=migrate` first, then the
    rest: that selector must name the Job and nothing the rollout needs."""
    labelled = [
        (item["kind"], item["metadata"]["name"])
        for item in objects
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "migrate"
    ]
    assert labelled == [("Job", "notes-migrate")]
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "-l app.kubernetes.io/component=migrate" in docs
