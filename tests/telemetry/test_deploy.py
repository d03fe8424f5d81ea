"""deploy/: aiproc and Jaeger v2 in docker compose, checked as data (no Docker needed)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yaml"
JAEGER = DEPLOY / "jaeger.yaml"
ALL_INTERFACES = "0.0.0.0"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


@pytest.fixture(scope="module")
def jaeger_config() -> dict[str, Any]:
    return load(JAEGER)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, from either of compose's two spellings."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def published(service: Mapping[str, Any]) -> dict[int, int]:
    """Container port to host port, for the short ("8080:80") and long port syntaxes."""
    ports: dict[int, int] = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports[int(port["target"])] = int(port["published"])
            continue
        spec = str(port).split("/")[0]
        *host, container = spec.split(":")
        assert host, f"port {port!r} is exposed but not published on the host"
        ports[int(container)] = int(host[-1])
    return ports


def endpoints(node: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Every `endpoint` value in a collector config, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "endpoint" and isinstance(value, str):
                yield where, value
            else:
                yield from endpoints(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from endpoints(value, f"{path}[{index}]")


def test_compose_runs_aiproc_and_jaeger(services: dict[str, Any]) -> None:
    assert set(services) == {"aiproc", "jaeger"}


def test_aiproc_is_built_from_the_repository_dockerfile(services: dict[str, Any]) -> None:
    build = services["aiproc"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_aiproc_exports_to_the_jaeger_service_over_otlp_grpc(services: dict[str, Any]) -> None:
    env = environment(services["aiproc"])
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.scheme == "http"
    assert endpoint.hostname == "jaeger"
    assert endpoint.hostname in services
    assert endpoint.port == 4317
    assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"
    assert env["OTEL_SERVICE_NAME"] == "aiproc"
    assert not any("KEY" in name for name in env), "API keys belong in the run-time environment"


def test_the_ports_are_published_on_the_host(services: dict[str, Any]) -> None:
    assert published(services["aiproc"]) == {50051: 50051}
    assert published(services["jaeger"]) == {4317: 4317, 4318: 4318, 16686: 16686}


def test_a_plaintext_unauthenticated_aiproc_is_published_on_loopback_only(
    services: dict[str, Any],
) -> None:
    # Inside its container aiproc must listen beyond loopback, which it refuses without TLS
    # and keys unless told; the demo says so, and keeps the port on the host's loopback.
    aiproc = services["aiproc"]
    assert environment(aiproc)["AIPROC_SERVER_ALLOW_INSECURE"] == "true"
    assert [str(port) for port in aiproc["ports"]] == ["127.0.0.1:50051:50051"]


def test_aiproc_listens_on_all_interfaces_at_the_published_port() -> None:
    # The compose file relies on the image's default command.
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^CMD \[.*"--listen", "0\.0\.0\.0:50051"', dockerfile, re.MULTILINE)
    assert re.search(r"^EXPOSE 50051$", dockerfile, re.MULTILINE)


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        image = str(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
    jaeger_image = services["jaeger"]["image"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger_image), jaeger_image


def test_jaeger_reads_the_config_file_in_deploy(services: dict[str, Any]) -> None:
    jaeger = services["jaeger"]
    command = jaeger["command"]
    config_path = command[command.index("--config") + 1]
    mounts = {}
    for volume in jaeger["volumes"]:
        source, target, *_ = str(volume).split(":")
        mounts[target] = (DEPLOY / source).resolve()
    assert mounts[config_path] == JAEGER.resolve()


def test_jaeger_otlp_receivers_listen_on_all_interfaces(jaeger_config: dict[str, Any]) -> None:
    protocols = jaeger_config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == f"{ALL_INTERFACES}:4317"
    assert protocols["http"]["endpoint"] == f"{ALL_INTERFACES}:4318"
    query_http = jaeger_config["extensions"]["jaeger_query"]["http"]["endpoint"]
    assert query_http == f"{ALL_INTERFACES}:16686"


def test_no_jaeger_endpoint_is_bound_to_localhost(jaeger_config: dict[str, Any]) -> None:
    found = dict(endpoints(jaeger_config))
    assert found, "no endpoints at all"
    for where, endpoint in found.items():
        host = endpoint.rpartition(":")[0]
        assert host == ALL_INTERFACES, f"{where} = {endpoint}: unreachable from outside"


def test_jaeger_stores_otlp_traces_in_memory(jaeger_config: dict[str, Any]) -> None:
    service = jaeger_config["service"]
    assert {"jaeger_storage", "jaeger_query"} <= set(service["extensions"])
    traces = service["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    assert "jaeger_storage_exporter" in traces["exporters"]
    backends = jaeger_config["extensions"]["jaeger_storage"]["backends"]
    storage = jaeger_config["exporters"]["jaeger_storage_exporter"]["trace_storage"]
    assert set(backends[storage]) == {"memory"}
    assert jaeger_config["extensions"]["jaeger_query"]["storage"]["traces"] == storage


def test_every_pipeline_component_is_defined(jaeger_config: dict[str, Any]) -> None:
    for name, pipeline in jaeger_config["service"]["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in jaeger_config[section], f"{name}: {section} {component}"
    for extension in jaeger_config["service"]["extensions"]:
        assert extension in jaeger_config["extensions"]


def test_metrics_sent_to_jaeger_are_accepted(jaeger_config: dict[str, Any]) -> None:
    # aiproc exports metrics to the same endpoint; without a metrics pipeline the
    # receiver answers UNIMPLEMENTED and the exporter logs an error every interval.
    metrics = jaeger_config["service"]["pipelines"]["metrics"]
    assert "otlp" in metrics["receivers"]
