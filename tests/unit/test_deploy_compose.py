"""Offline checks of docker-compose.yml: what can be proven without a container engine.

- the file is valid against the Compose specification's JSON Schema (vendored, see
  deploy_schemas/README.md);
- every image is pinned, every referenced file, volume, config and service exists;
- start-up order holds: a `service_healthy` dependency has a healthcheck, a
  `service_completed_successfully` one is a one-shot;
- the workers' settings parse with the real Settings model and agree with the other
  services (broker listener, emulator ports, Redis, metrics port, probes, Prometheus targets,
  drain deadline vs stop grace period).

What only `docker compose up` proves (images pull, containers start, the demo flows) is
listed in docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "deploy_schemas" / "compose-spec.json"
WORKER_PORT = 9100


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if (svc.get("command") or [None])[0] == "worker"}


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "environment is written as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("AUDIOGUARD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _container_ports(svc: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from the short syntax "HOST:CONTAINER"."""
    out: dict[int, int] = {}
    for spec in svc.get("ports", []):
        host, container = str(spec).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_catches_a_broken_file(compose: dict[str, Any]) -> None:
    # the validation above is only worth something if the schema rejects real mistakes
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["depends_on"] = {"kafka": {"condition": "service_happy"}}
    broken["services"]["kafka"]["healthchek"] = {}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_stack_the_issue_asks_for(services: dict[str, dict[str, Any]]) -> None:
    images = {name: str(svc.get("image", "")) for name, svc in services.items()}
    assert images["kafka"].startswith("apache/kafka:")
    # KRaft: the broker is its own controller, no ZooKeeper
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "emulators" in images["pubsub"] and "pubsub" in services["pubsub"]["command"]
    assert images["moto"].startswith("motoserver/moto:")
    assert images["redis"].startswith("redis:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    default_workers = [n for n, s in _workers(services).items() if not s.get("profiles")]
    assert len(default_workers) == 2
    assert "publish" in " ".join(services["publisher"]["command"])


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if "build" in svc:
            assert svc["build"]["target"] == "worker", name
            continue
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} not pinned"


def test_build_target_and_args_exist_in_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.IGNORECASE))
    args = set(re.findall(r"^ARG\s+([A-Z_]+)", dockerfile, re.MULTILINE))
    for name, svc in services.items():
        if "build" not in svc:
            continue
        assert svc["build"]["context"] == "."
        assert svc["build"]["target"] in stages, name
        assert set(svc["build"].get("args", {})) <= args, name


def test_referenced_files_volumes_and_configs_exist(compose: dict[str, Any]) -> None:
    named_volumes = set(compose.get("volumes") or {})
    configs = set(compose.get("configs") or {})
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes", []):
            source = str(spec).split(":")[0]
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve()
                assert path.exists(), f"{name}: bind mount {source} does not exist (yet?)"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
        for ref in svc.get("configs", []):
            assert ref["source"] in configs, name
        for dep in svc.get("depends_on", {}):
            assert dep in compose["services"], f"{name} depends on unknown {dep}"


def test_start_up_order_is_carried_by_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            condition = cond["condition"]
            target = services[dep]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is waited on to finish: it must be a one-shot"
    # brokers before topics, topics before workers, workers before the publisher
    assert set(services["topics"]["depends_on"]) == {"kafka", "pubsub", "moto"}
    for name in _workers(services):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert {"worker-1", "worker-2"} <= set(services["publisher"]["depends_on"])


def test_host_ports_are_unique(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[int, str] = {}
    for name, svc in services.items():
        for host in _container_ports(svc).values():
            assert host not in seen, f"host port {host} used by {seen.get(host)} and {name}"
            seen[host] = name


def test_every_audioguard_container_has_settings_that_parse(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = [n for n, s in services.items() if any(k.startswith("AUDIOGUARD_") for k in _env(s))]
    assert {"topics", "publisher", "worker-1", "worker-2"} <= set(users)
    for name in users:
        with monkeypatch.context() as m:
            settings = _settings_from(_env(services[name]), m)
        assert settings.tenants == ["acme", "globex"], name


def test_workers_agree_with_the_services_they_use(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka_env = services["kafka"]["environment"]
    advertised = dict(item.split("://") for item in str(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).split(","))
    pubsub_port = next(a.split(":")[-1] for a in services["pubsub"]["command"] if a.startswith("--host-port"))
    for name, svc in _workers(services).items():
        env = _env(svc)
        with monkeypatch.context() as m:
            s = _settings_from(env, m)
        transport = svc["command"][svc["command"].index("--transport") + 1]
        assert s.transport == transport, f"{name}: AUDIOGUARD_TRANSPORT disagrees with --transport"
        assert s.kafka.bootstrap_servers == advertised["PLAINTEXT"], name
        assert s.pubsub.emulator_host == f"pubsub:{pubsub_port}", name
        for url in (s.kinesis.endpoint_url, s.storage.s3_endpoint_url):
            parsed = urlparse(str(url))
            assert parsed.hostname == "moto" and parsed.port == _moto_port(services), name
        store = urlparse(s.store.url)
        assert store.scheme == "redis" and store.hostname == "redis" and store.port == 6379, name
        assert s.metrics_port == WORKER_PORT and WORKER_PORT in _container_ports(svc), name
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{s.metrics_port}/readyz" in probe, name
        grace = int(str(svc["stop_grace_period"]).rstrip("s"))
        assert grace > s.drain_seconds, f"{name}: stop_grace_period must outlast the drain deadline"
        mounts = [str(v) for v in svc.get("volumes", [])]
        assert any(m.split(":")[1] == str(root) for root in s.storage.file_roots for m in mounts), name


def _moto_port(services: dict[str, dict[str, Any]]) -> int:
    return int(services["moto"]["environment"]["MOTO_PORT"])


def test_prometheus_scrapes_every_worker_and_loads_the_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])
    jobs = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in config["scrape_configs"]
    }
    # the workers alone in the job WorkerDown counts; the other services in jobs of their own
    assert jobs.pop("audioguard") == {f"{name}:{WORKER_PORT}" for name in _workers(services)}
    assert jobs == {"audioguard-reporting": {"reporting:9100"}, "audioguard-api": {"api:8080"}}
    rule_glob = config["rule_files"][0]
    mounted = [str(v).split(":")[1] for v in services["prometheus"]["volumes"]]
    assert any(Path(m).match(rule_glob) for m in mounted)
    assert any(str(v).startswith("./deploy/prometheus/rules.yml:") for v in services["prometheus"]["volumes"])


def test_reporting_and_the_api_use_the_database_and_the_stores_the_stack_runs(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    db_env = services["postgres"]["environment"]
    for name in ("reporting", "api"):
        svc = services[name]
        with monkeypatch.context() as m:
            s = _settings_from(_env(svc), m)
        url = urlparse(str(s.database.url))
        assert (url.hostname, url.port, url.path.lstrip("/")) == ("postgres", 5432, db_env["POSTGRES_DB"]), (
            name
        )
        assert (url.username, url.password) == (db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"]), name
        assert s.kafka.bootstrap_servers == "kafka:9092", name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
    api = services["api"]
    with monkeypatch.context() as m:
        s = _settings_from(_env(api), m)
    assert urlparse(s.api.rate_limit_url).hostname == "redis", "replicas share one rate limit"
    port = api["command"][api["command"].index("--port") + 1]
    assert f"{port}:{port}" in api["ports"] and f"127.0.0.1:{port}/healthz" in " ".join(
        api["healthcheck"]["test"]
    )
    # uploads are written where the workers read them
    assert "audio:/srv/audio" in api["volumes"] and Path("/srv/audio") in s.storage.file_roots


def test_grafana_is_provisioned_with_the_repository_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    providers = yaml.safe_load(compose["configs"]["grafana-dashboards"]["content"])["providers"]
    datasource = yaml.safe_load(compose["configs"]["grafana-datasource"]["content"])["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    mount = next(str(v) for v in grafana["volumes"] if "audioguard-dashboard.json" in str(v))
    source, target = mount.split(":")[:2]
    assert source == "./deploy/grafana/audioguard-dashboard.json"
    assert str(Path(target).parent) == providers[0]["options"]["path"]
    dashboard_path = ROOT / source
    if dashboard_path.exists():
        # a dashboard pinned to a datasource uid must name the one provisioned here
        text = dashboard_path.read_text()
        pinned = {u for u in re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"]+)"', text) if "$" not in u}
        assert pinned <= {datasource["uid"]}, f"dashboard names datasource uids {pinned}"


def test_topics_and_publisher_cover_the_workers_tenants(services: dict[str, dict[str, Any]]) -> None:
    tenants = json.loads(services["worker-1"]["environment"]["AUDIOGUARD_TENANTS"])
    topics = " ".join(services["topics"]["command"])
    assert sorted(re.findall(r"--tenant (\S+)", topics)) == sorted(tenants)
    assert set(re.findall(r"for transport in ([a-z ]+);", topics)[0].split()) == {
        "kafka",
        "pubsub",
        "kinesis",
    }
    # every Kafka worker of the default profile gets a partition; more would sit idle
    partitions = int(re.findall(r"--partitions (\d+)", topics)[0])
    kafka_workers = [
        n for n, s in _workers(services).items() if "kafka" in s["command"] and not s.get("profiles")
    ]
    assert partitions >= len(kafka_workers) >= 2
    publisher = " ".join(services["publisher"]["command"])
    assert sorted(re.findall(r"for tenant in ([a-z0-9 -]+);", publisher)[0].split()) == sorted(tenants)
    assert any(str(v).endswith(":/srv/audio") for v in services["publisher"]["volumes"]), (
        "writes where workers read"
    )


def test_grafana_also_loads_the_reporting_dashboard_on_compose_postgres(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    datasources = yaml.safe_load(compose["configs"]["grafana-datasource"]["content"])["datasources"]
    reporting = next(d for d in datasources if d["type"] == "grafana-postgresql-datasource")
    postgres = compose["services"]["postgres"]["environment"]
    assert reporting["url"].split(":")[0] == "postgres"
    assert reporting["user"] == postgres["POSTGRES_USER"]
    assert reporting["jsonData"]["database"] == postgres["POSTGRES_DB"]
    assert reporting["secureJsonData"]["password"] == postgres["POSTGRES_PASSWORD"]
    mount = next(str(v) for v in grafana["volumes"] if "reporting-dashboard.json" in str(v))
    assert (ROOT / mount.split(":")[0]).is_file()
    # the dashboard pins this data source's uid (its other panels use a variable of its type)
    text = (ROOT / mount.split(":")[0]).read_text()
    pinned = {u for u in re.findall(r'"uid":\s*"([^"$]+)"', text)}
    assert reporting["uid"] in pinned, pinned


def test_scrape_job_is_the_one_the_rules_and_dashboard_select(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(compose["configs"]["prometheus-config"]["content"])
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    selected: set[str] = set()
    for path in (ROOT / "deploy/prometheus/rules.yml", ROOT / "deploy/grafana/audioguard-dashboard.json"):
        if path.exists():
            selected |= set(re.findall(r'job=\\?"([^"\\]+)', path.read_text()))
    assert selected, "the rules and the dashboard select a job"
    assert selected <= jobs, f"rules/dashboard select jobs {selected - jobs} that compose does not scrape"
