"""The Kubernetes manifests and the monitoring under k8s/ stay coherent with the code.

Nothing here needs a cluster or the test services: the checks read the YAML, the JSON
dashboard, setup.cfg and the Python sources (by AST, without importing them). Each check is a
function returning a list of problems, so that the self-tests at the end can show that it
finds the mistakes it is there for.
"""
from __future__ import annotations

import ast
import configparser
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SOURCE_DIRS = ("streams", "agents", "web", "tables", "sql")
NAMESPACE = "crash-game"

# YAML files under k8s/ that are not Kubernetes objects.
NOT_MANIFESTS = {"monitoring/prometheus-scrape.yaml"}
SECRET_TEMPLATE = "secret.example.yaml"

# Series that the alerts and the dashboard use but that the project does not define.
EXTERNAL_METRICS = {
    "up": "Prometheus itself: 1 when a scrape succeeded",
    "kafka_consumergroup_lag": "kafka_exporter (danielqsj/kafka_exporter), deployed with Kafka",
    "process_resident_memory_bytes": "prometheus-client's process collector, on the default registry",
}

# The processes whose own web server answers a probe: the source files that define the routes
# (prometheus-client's start_http_server answers /metrics, on any path in fact).
ROUTES_OF = {
    "crash-worker": ("web/metrics_view.py",),
    "crash-ops": ("web/operator_views.py", "web/jackpot_views.py", "web/metrics_view.py"),
    "crash-gateway": ("web/gateway.py",),
    "crash-wallet": ("web/wallet.py",),
    "crash-payout": ("agents/payout_adapter.py",),
    "crash-sink": ("agents/sink.py",),
    "crash-push": ("web/push.py", "web/push_http.py"),
}

# Settings that carry a password or a key: Secret only.
SECRET_SETTINGS = {"CRASH_DB_URL", "CRASH_SECRET_DB_URL", "CRASH_WALLET_DB_URL", "CRASH_API_KEYS",
                   "CRASH_WALLET_KEY_SECRET", "CRASH_SESSION_SECRET", "CRASH_CONSOLE_SECRET",
                   "CRASH_JACKPOT_WEBHOOK_SECRET"}

POD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"}

PROMQL_WORDS = {
    # aggregations, functions and keywords: anything else that looks like a name is a metric
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
    "count_values", "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear",
    "histogram_quantile", "absent", "absent_over_time", "present_over_time", "clamp", "clamp_min",
    "clamp_max", "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "changes",
    "resets", "label_replace", "label_join", "time", "timestamp", "vector", "scalar", "sort",
    "sort_desc", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "last_over_time", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
}


# ---------------------------------------------------------------- reading

def rel(path: Path) -> str:
    return path.relative_to(K8S).as_posix()


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def is_kustomization(path: Path) -> bool:
    return path.name in ("kustomization.yaml", "kustomization.yml")


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) for every Kubernetes object under k8s/, the Secret template included."""
    found = []
    for path in yaml_files():
        if is_kustomization(path) or rel(path) in NOT_MANIFESTS:
            continue
        found.extend((rel(path), doc) for doc in load_docs(path))
    return found


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc.get("kind") == kind]


def the(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def workloads() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file, workload object, pod spec) of every object that runs pods."""
    for file, obj in manifests():
        spec = pod_spec(obj)
        if spec is not None:
            yield file, obj, spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def config_data(name: str = "crash-config") -> dict[str, str]:
    return the("ConfigMap", name)["data"]


def settings_env_names() -> set[str]:
    """The CRASH_* names that streams/settings.py reads (its _env / _env_int / _secret calls and
    the profile's os.environ.get)."""
    tree = ast.parse((ROOT / "streams" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id in ("_env", "_env_int", "_secret")) or (
                isinstance(func, ast.Attribute) and func.attr == "get" and node.args[0].value.startswith("CRASH_")):
            names.add(node.args[0].value)
    return names


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    entries = {}
    for line in parser["options.entry_points"]["console_scripts"].splitlines():
        if "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            entries[name] = target
    return entries


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def python_sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary"}


def defined_metrics(sources: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """{metric name: type} of every prometheus-client metric constructed in the sources."""
    if sources is None:
        sources = [(p.as_posix(), p.read_text()) for p in python_sources()]
    found = {}
    for filename, text in sources:
        for node in ast.walk(ast.parse(text, filename)):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            first = node.args[0]
            if kind in METRIC_TYPES and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found[first.value] = kind
    return found


def exported_series(defined: dict[str, str]) -> set[str]:
    """The series names prometheus-client exports for these metrics."""
    series = set()
    for name, kind in defined.items():
        if kind == "Counter":
            base = name[: -len("_total")] if name.endswith("_total") else name
            series |= {base + "_total", base + "_created"}
        elif kind == "Gauge":
            series.add(name)
        elif kind == "Histogram":
            series |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        elif kind == "Summary":
            series |= {name, name + "_sum", name + "_count", name + "_created"}
    return series


def promql_metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression (good enough for the project's own expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                      # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                     # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                    # Grafana variables
    names = re.findall(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def alert_rules() -> list[dict[str, Any]]:
    rule = the("PrometheusRule", "crash-game")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend((panel.get("title", "?"), t["expr"]) for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))

    walk(dash["panels"])
    return exprs


def readme_anchors() -> set[str]:
    anchors = set()
    for line in (K8S / "README.md").read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:   # GitHub's slug: lower case, punctuation dropped, spaces to dashes
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


# ---------------------------------------------------------------- checks (lists of problems)

def command_problems(command: list[str] | None, scripts: dict[str, str]) -> list[str]:
    """A container's command must be a console script of setup.cfg or `python -m` of a module
    of the project that runs as a script."""
    if not command:
        return ["no command (the image's entrypoint is not part of the contract)"]
    if command[0] in scripts:
        return []
    if command[:2] in (["python", "-m"], ["python3", "-m"]) and len(command) > 2:
        path = module_file(command[2])
        if path is None:
            return [f"python -m {command[2]}: no such module in the project"]
        if path.name != "__main__.py" and "__name__ == \"__main__\"" not in path.read_text():
            return [f"python -m {command[2]}: the module has no __main__ block"]
        return []
    return [f"{command[0]!r} is neither a console script of setup.cfg nor python -m"]


def env_problems(names: set[str], settings: set[str]) -> list[str]:
    return [f"{name} is not read by streams/settings.py" for name in sorted(names - settings)]


def serves_path(source: str, path: str) -> bool:
    return f'"{path}"' in source or (path == "/metrics" and "start_http_server(" in source)


def metric_problems(where: str, expr: str, known: set[str]) -> list[str]:
    return [f"{where}: {name} is not a metric of the code (nor a listed external one)"
            for name in sorted(promql_metric_names(expr) - known)]


def known_series() -> set[str]:
    return exported_series(defined_metrics()) | set(EXTERNAL_METRICS)


def env_names_set() -> set[str]:
    """Every variable a manifest puts in a container's environment."""
    names = set()
    for _, _, spec in workloads():
        for container in containers(spec):
            names |= {entry["name"] for entry in container.get("env") or []}
            for source in container.get("envFrom") or []:
                if "configMapRef" in source:
                    names |= set(the("ConfigMap", source["configMapRef"]["name"])["data"])
                if "secretRef" in source:
                    names |= set(the("Secret", source["secretRef"]["name"])["stringData"])
    for secret in objects("Secret"):   # the template's keys are variables too
        names |= set(secret.get("stringData") or {})
    return names


# ---------------------------------------------------------------- files

def test_every_yaml_file_parses():
    files = yaml_files()
    assert len(files) >= 10, files
    for path in files:
        docs = load_docs(path)
        assert docs, f"{rel(path)} is empty"
        assert all(isinstance(doc, dict) for doc in docs), f"{rel(path)}: a document is not a mapping"


def test_every_manifest_has_api_version_kind_name_and_namespace():
    found = manifests()
    assert len(found) >= 20
    for file, obj in found:
        where = f"{file}: {obj.get('kind')}"
        assert obj.get("apiVersion"), f"{where} has no apiVersion"
        assert obj.get("kind"), f"{file}: an object has no kind"
        assert (obj.get("metadata") or {}).get("name"), f"{where} has no metadata.name"
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{where} is not in namespace {NAMESPACE}"


def test_kustomizations_reference_existing_files_and_cover_every_manifest():
    referenced: set[Path] = set()
    for path in yaml_files():
        if not is_kustomization(path):
            continue
        kust = load_docs(path)[0]
        assert kust["kind"] == "Kustomization", rel(path)
        assert kust.get("namespace") == NAMESPACE, rel(path)
        for entry in kust.get("resources", []):
            target = (path.parent / entry).resolve()
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{rel(path)}: {entry} missing"
            referenced.add(target)
        for generator in kust.get("configMapGenerator", []):
            for entry in generator.get("files", []):
                target = (path.parent / entry.split("=")[-1]).resolve()
                assert target.is_file(), f"{rel(path)}: {entry} missing"
                referenced.add(target)
    template = (K8S / SECRET_TEMPLATE).resolve()
    assert template not in referenced, "the Secret template must never be applied by kustomize"
    for path in yaml_files():
        if is_kustomization(path) or rel(path) in NOT_MANIFESTS or path.resolve() == template:
            continue
        assert path.resolve() in referenced, f"{rel(path)} is in no kustomization"
    assert (K8S / "monitoring" / "grafana-dashboard.json").resolve() in referenced


@pytest.mark.parametrize("directory", ["k8s", "k8s/dev", "k8s/monitoring"])
def test_kustomize_builds(directory):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (the kustomize build is checked where it is)")
    result = subprocess.run(["kubectl", "kustomize", str(ROOT / directory)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    built = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(result.stdout) if doc}
    assert not [name for kind, name in built if kind == "Secret"], "Secrets come from the template only"
    if directory == "k8s/dev":
        assert ("Deployment", "crash-wallet") in built
    if directory == "k8s":
        assert ("Deployment", "crash-wallet") not in built, "the reference wallet belongs to the dev overlay only"
        assert {("StatefulSet", "crash-worker"), ("Deployment", "crash-gateway"), ("Deployment", "crash-payout"),
                ("Job", "crash-migrate")} <= built


# ---------------------------------------------------------------- containers

def test_every_container_runs_a_console_script_or_a_project_module():
    scripts = console_scripts()
    count = 0
    for file, obj, spec in workloads():
        for container in containers(spec):
            count += 1
            problems = command_problems(container.get("command"), scripts)
            assert not problems, f"{file}: {obj['kind']} {obj['metadata']['name']}/{container['name']}: {problems}"
            assert not container.get("args"), "put the whole command line in `command`"
    assert count >= 6


def used_scripts() -> set[str]:
    scripts = console_scripts()
    return {c["command"][0] for _, _, spec in workloads() for c in containers(spec) if c["command"][0] in scripts}


@pytest.mark.parametrize("script", sorted(ROUTES_OF))
def test_console_scripts_that_manifests_run_exist_in_the_code(script):
    assert script in used_scripts(), f"no manifest runs {script}"
    module, _, function = console_scripts()[script].partition(":")
    path = module_file(module)
    assert path is not None, f"{script}: module {module} does not exist"
    assert re.search(rf"^def {function}\(", path.read_text(), re.M), f"{script}: {module} has no {function}()"


def test_every_env_var_is_a_setting_the_code_reads():
    names = env_names_set()
    assert {"CRASH_KAFKA_BOOTSTRAP", "CRASH_DB_URL", "CRASH_GATEWAY_ID", "CRASH_API_KEYS"} <= names
    assert env_problems(names, settings_env_names()) == []


def test_config_map_is_strings_without_secrets():
    data = config_data()
    for key, value in data.items():
        assert isinstance(value, str), f"{key}: ConfigMap values must be strings (quote them)"
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key} holds a password: put it in a Secret"
        assert key not in SECRET_SETTINGS, f"{key} belongs in a Secret"
    assert data["CRASH_PARTITIONS"] == "8"
    assert data["CRASH_WEB_HOST"] == data["CRASH_GATEWAY_HOST"] == "0.0.0.0", "pods must listen on their IP"


def test_secret_template_holds_placeholders_only():
    template = K8S / SECRET_TEMPLATE
    secrets = load_docs(template)
    assert {s["metadata"]["name"] for s in secrets} == {"crash-db", "crash-chain-db", "crash-wallet-db", "crash-keys",
                                                        "crash-audit-s3"}
    for secret in secrets:
        assert secret["kind"] == "Secret"
        assert "data" not in secret, "the template uses stringData (readable placeholders)"
        for key, value in secret["stringData"].items():
            assert "CHANGE_ME" in value, f"{secret['metadata']['name']}.{key} is not a placeholder"
    others = [file for file, obj in manifests() if obj["kind"] == "Secret" and file != SECRET_TEMPLATE]
    assert others == [], f"Secrets outside the template: {others}"


def test_env_references_resolve_to_defined_objects_and_keys():
    secrets = {s["metadata"]["name"]: s["stringData"] for s in objects("Secret")}
    configmaps = {c["metadata"]["name"]: c.get("data") or {} for c in objects("ConfigMap")}
    for file, obj, spec in workloads():
        for container in containers(spec):
            where = f"{file}: {obj['metadata']['name']}/{container['name']}"
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or source.get("secretRef")
                pool = configmaps if "configMapRef" in source else secrets
                assert ref["name"] in pool, f"{where}: envFrom {ref['name']} is not defined"
            for entry in container.get("env") or []:
                source = entry.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    assert ref["key"] in secrets.get(ref["name"], {}), f"{where}: {entry['name']} -> {ref}"
                    assert ref["key"] == entry["name"], f"{where}: the Secret key names the variable"
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    assert ref["key"] in configmaps.get(ref["name"], {}), f"{where}: {entry['name']} -> {ref}"


def test_only_workers_and_migrations_see_the_secret_chain_store():
    # DESIGN section 6: the unused chain (every future crash point) has its own grants.
    for file, obj, spec in workloads():
        for container in containers(spec):
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env") or []
                    if "secretKeyRef" in (e.get("valueFrom") or {})}
            if "crash-chain-db" in refs:
                # crash-ops: creating a channel generates and stores its chain.
                assert obj["metadata"]["name"] in ("crash-worker", "crash-ops", "crash-migrate"), file


def test_pods_are_hardened_and_sized():
    for file, obj, spec in workloads():
        name = obj["metadata"]["name"]
        # Service links would set e.g. CRASH_GATEWAY_PORT=tcp://..., which settings.py reads.
        assert spec.get("enableServiceLinks") is False, f"{file}: {name} must disable service links"
        assert spec.get("automountServiceAccountToken") is False, f"{file}: {name} does not call the API"
        assert spec["securityContext"].get("runAsNonRoot") is True, f"{file}: {name}"
        for container in containers(spec):
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part) or {}), f"{file}: {name}/{container['name']}"
            assert container["securityContext"].get("allowPrivilegeEscalation") is False
            assert container["image"].split(":")[0] == "crash-game", "one image, set by kustomize images"


def test_probes_use_named_ports_and_paths_the_process_serves():
    scripts = console_scripts()
    for file, _, spec in workloads():
        for container in containers(spec):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
            script = container["command"][0] if container["command"][0] in scripts else None
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if probe is None:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket")
                assert action and action["port"] in ports, f"{file}: {kind} of {container['name']} uses no named port"
                if "httpGet" not in probe:
                    continue
                path = probe["httpGet"]["path"]
                sources = [ROOT / s for s in ROUTES_OF.get(script, ())]
                assert sources, f"{file}: {kind} on a process without known routes"
                assert any(serves_path(s.read_text(), path) for s in sources), \
                    f"{file}: {kind} path {path} is not a route of {script}"


# ---------------------------------------------------------------- components

def test_worker_statefulset_matches_the_partitioning_and_faust_settings():
    config = config_data()
    worker = the("StatefulSet", "crash-worker")
    spec = worker["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    # One worker owns all partitions of a channel; a worker beyond the partition count idles.
    assert 1 <= spec["replicas"] <= int(config["CRASH_PARTITIONS"])
    assert container["command"] == ["crash-worker", "worker", "-l", "info"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["web"] == int(config["CRASH_WEB_PORT"])
    # The workers serve no operator view (crash-ops does): nothing a person asks for shares their loop.
    assert container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    ops = the("Deployment", "crash-ops")["spec"]["template"]["spec"]["containers"][0]
    assert ops["command"] == ["crash-ops", "worker", "-l", "info"]
    assert ops["readinessProbe"]["httpGet"]["path"] == "/ops/channels"
    # RocksDB state on the claim: CRASH_DATA_DIR lies under the claim's mount.
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert any(config["CRASH_DATA_DIR"].startswith(mounts[c].rstrip("/") + "/") for c in claims if c in mounts)
    # A clean Faust stop outlasts a few session timeouts.
    assert pod["terminationGracePeriodSeconds"] >= 3 * int(config["CRASH_SESSION_TIMEOUT_MS"]) / 1000
    assert pod["affinity"]["podAntiAffinity"]
    assert spec["serviceName"] == "crash-worker" and the("Service", "crash-worker")["spec"]["clusterIP"] == "None"


def test_dev_overlay_keeps_workers_within_the_partitions():
    text = (K8S / "dev" / "kustomization.yaml").read_text()
    replicas = [int(v) for v in re.findall(r"path: /spec/replicas\s+value: (\d+)", text)]
    assert replicas and max(replicas) <= int(config_data()["CRASH_PARTITIONS"])


def test_gateway_ids_are_pod_names_and_the_hpa_owns_the_replicas():
    gateway = the("Deployment", "crash-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["CRASH_GATEWAY_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config_data()["CRASH_GATEWAY_PORT"])
    assert "replicas" not in gateway["spec"], "the HPA sets the replicas"
    hpa = the("HorizontalPodAutoscaler", "crash-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "crash-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_payout_adapter_runs_several_replicas_with_a_metrics_port():
    payout = the("Deployment", "crash-payout")
    assert payout["spec"]["replicas"] >= 2
    container = payout["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["crash-payout"]
    port = int(config_data()["CRASH_PAYOUT_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == port
    assert the("Service", "crash-payout")["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_migrate_job_runs_migrations_then_topics():
    job = the("Job", "crash-migrate")
    spec = job["spec"]["template"]["spec"]
    assert [c["command"] for c in spec["initContainers"]] == [["python", "-m", "sql.migrate"]]
    assert [c["command"] for c in spec["containers"]] == [["crash-admin", "topics"]]
    assert spec["restartPolicy"] == "Never"


def test_services_and_pdbs_select_existing_pods_and_ports():
    pods = [(obj["metadata"]["name"], obj["spec"]["template"]["metadata"]["labels"], spec)
            for _, obj, spec in workloads() if obj["kind"] not in ("Job", "CronJob")]

    def selected(selector):
        return [(name, spec) for name, labels, spec in pods if selector.items() <= labels.items()]

    for service in objects("Service"):
        matches = selected(service["spec"]["selector"])
        assert matches, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for name, spec in matches:
                names = {p["name"] for c in spec["containers"] for p in c.get("ports") or []}
                assert port["targetPort"] in names, f"Service {service['metadata']['name']}: {port} not on {name}"
    covered = set()
    for pdb in objects("PodDisruptionBudget"):
        covered |= {name for name, _ in selected(pdb["spec"]["selector"]["matchLabels"])}
    assert {"crash-worker", "crash-gateway"} <= covered


# ---------------------------------------------------------------- monitoring

def test_service_monitors_scrape_the_services_the_alerts_name():
    services = {s["metadata"]["name"]: s for s in objects("Service")}
    jobs = set()
    for monitor in objects("ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matches = [s for s in services.values() if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(matches) == 1, f"ServiceMonitor {monitor['metadata']['name']} must select one Service"
        port_names = {p["name"] for p in matches[0]["spec"]["ports"]}
        assert all(e["port"] in port_names for e in monitor["spec"]["endpoints"])
        assert matches[0]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"  # the plain-config path
        jobs.add(matches[0]["metadata"]["name"])   # the operator's job label is the Service name
    assert jobs == {"crash-worker", "crash-gateway", "crash-payout", "crash-push"}
    used = set()
    for rule in alert_rules():
        used |= set(re.findall(r'job="([\w-]+)"', rule["expr"]))
        for pattern in re.findall(r'job=~"([^"]+)"', rule["expr"]):
            used |= set(pattern.split("|"))
    assert used and used <= jobs, used - jobs


def test_plain_prometheus_config_scrapes_annotated_services_by_name():
    config = load_docs(K8S / "monitoring" / "prometheus-scrape.yaml")[0]
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [NAMESPACE]
    relabels = job["relabel_configs"]
    assert any(r.get("target_label") == "job" and r["source_labels"] == ["__meta_kubernetes_service_name"]
               for r in relabels)
    assert not any("\\1" in str(r.get("regex", "")) for r in relabels), "Prometheus regexes (RE2) have no backrefs"


def test_alert_rules_are_complete_and_documented():
    rules = alert_rules()
    anchors = readme_anchors()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(r["alert"] + r["labels"]["severity"] for r in rules))
    known = known_series()
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: k8s/README.md has no section #{anchor}"
        assert metric_problems(rule["alert"], rule["expr"], known) == []
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    used = set().union(*(promql_metric_names(r["expr"]) for r in rules))
    required = {"crash_payouts_failed", "crash_payout_latency_seconds_bucket", "gateway_decision_seconds_bucket",
                "crash_term_transition_lag_ms_bucket", "crash_dead_letters_total", "crash_sink_retries_total",
                "crash_chain_exhausted_total", "up", "kafka_consumergroup_lag",
                "jackpot_processing_latency_bucket", "jackpot_reconciliation_difference_bps",
                "jackpot_contribute_total"}
    assert required <= used, required - used
    decisions = " ".join(r["expr"] for r in rules if "gateway_decision_seconds_bucket" in r["expr"])
    assert "0.15" in decisions and "0.1" in decisions, "DESIGN section 14: place p99 150 ms, cashout p99 100 ms"


def test_dashboard_is_valid_json_and_uses_only_real_metrics():
    dash = dashboard()
    assert dash["title"] and dash["uid"]
    ids = []

    def walk(panels):
        for panel in panels:
            ids.append(panel["id"])
            walk(panel.get("panels", []))

    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = dashboard_exprs(dash)
    known = known_series()
    for title, expr in exprs:
        assert metric_problems(title, expr, known) == []
        assert expr.count("(") == expr.count(")"), title
    used = set().union(*(promql_metric_names(expr) for _, expr in exprs))
    required = {"crash_term_transitions_total", "crash_bet_decisions_total", "gateway_decision_seconds_bucket",
                "crash_cashouts_total", "crash_payouts_total", "crash_payouts_failed", "crash_sink_events_total",
                "crash_sink_retries_total", "crash_dead_letters_total", "crash_batch_seconds_bucket",
                "jackpot_current_value", "jackpot_award_total", "jackpot_contributed_minor_units_total"}
    assert required <= used, required - used


def test_readme_documents_the_runbook():
    text = (K8S / "README.md").read_text()
    for needle in ("POST /ops/payouts/{order_no}/retry", "crash-verify --channel", "kubectl apply -k k8s",
                   "crash-migrate", "CRASH_PARTITIONS", "docker build"):
        assert needle in text, needle


# ---------------------------------------------------------------- the checks can fail

def test_metric_check_rejects_names_the_code_does_not_define():
    known = known_series()
    # A metric nobody defines.
    expr = 'histogram_quantile(0.95, sum by (le) (rate(jackpot_imaginary_latency_bucket{job="x"}[5m]))) > 0.5'
    assert promql_metric_names(expr) == {"jackpot_imaginary_latency_bucket"}
    assert metric_problems("t", expr, known)
    # A Counter is exported with _total, a Histogram with _bucket/_sum/_count, never bare.
    assert metric_problems("t", "rate(crash_cashouts[5m])", known)
    assert metric_problems("t", "crash_batch_seconds > 1", known)
    assert not metric_problems("t", "sum by (consumer) (rate(crash_batch_seconds_count[5m]))", known)
    defined = defined_metrics([("x.py", 'from prometheus_client import Counter\nC = Counter("a_total", "d")\n'
                                         'H = metrics.Histogram("h_seconds", "d")\n')])
    assert exported_series(defined) >= {"a_total", "h_seconds_bucket", "h_seconds_count"}


def test_command_check_rejects_unknown_programs_and_modules():
    scripts = console_scripts()
    assert command_problems(["crash-worker", "worker", "-l", "info"], scripts) == []
    assert command_problems(["python", "-m", "sql.migrate"], scripts) == []
    assert command_problems(["crash-frobnicate"], scripts)
    assert command_problems(["python", "-m", "sql.no_such_module"], scripts)
    assert command_problems(["python", "-m", "sql.db"], scripts), "sql.db has no __main__ block"
    assert command_problems(["/bin/sh", "-c", "crash-worker"], scripts)
    assert command_problems(None, scripts)


def test_env_check_rejects_variables_the_code_does_not_read():
    settings = settings_env_names()
    assert {"CRASH_KAFKA_BOOTSTRAP", "CRASH_PARTITIONS", "CRASH_GATEWAY_ID"} <= settings
    assert env_problems({"CRASH_KAFKA_BOOTSTRAP"}, settings) == []
    assert env_problems({"CRASH_KAFKA_BROKERS"}, settings)
    assert env_problems({"KAFKA_BOOTSTRAP_SERVERS"}, settings)
