"""Configuration: TOML file, then environment, then flags; validated once into frozen dataclasses.

Nothing reads the environment after `load_config` returns, except provider
API keys, which are read from the variable named by `api_key_env` (or the file
named by `api_key_file`) when the provider is built, so keys never sit in the
config object or its repr.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

DEFAULT_LISTEN = "127.0.0.1:50051"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
EVENT_LOOPS = ("uvloop", "asyncio")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
"""A tenant (client identity): what tasks are filed under, so it must suit store keys."""
TENANT_RULE = "1-128 letters, digits, '.', '_' or '-'"
ROLES = ("client", "admin")
KEY_HASH_PREFIX = "sha256:"
_KEY_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
QUEUE_REQUEST_OVERHEAD_BYTES = 1536 * 1024
"""Bytes the fields of a valid QueueTaskRequest other than content can take at most (its
field limits, in 4-byte characters, and protobuf framing): about 1.35 MiB, rounded up."""
MIN_METADATA_BYTES = 1024
"""Below this, gRPC's own headers and a client id would not fit."""
_MIN_KEEPALIVE_SECONDS = 0.001
_MAX_GRPC_MILLIS = 2**31 - 1

PROVIDER_KINDS = ("openai", "anthropic", "azure_openai", "ollama", "gemini", "offline")
# Where each vendor's API lives when base_url is not given; openai-compatible
# servers and Azure deployments have no universal address, so they must say.
DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "ollama": "http://127.0.0.1:11434",
}
BREAKER_PRESETS = ("default", "strict", "lenient", "custom")
FAILOVER_STRATEGIES = (
    "priority",
    "round_robin",
    "weighted",
    "random",
    "least_latency",
    "least_errors",
    "least_cost",
    "least_busy",
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field and the reason."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"invalid config: {field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    """host:port the gRPC server binds; port 0 picks a free one. Default 127.0.0.1:50051."""
    data_dir: str = "./data"
    """Where the server keeps its files. Default ./data."""
    store: str = "sqlite"
    """Where tasks and results live: "sqlite" (a file under data_dir, survives crashes),
    "memory" (lost with the process), or a Redis URL ("redis://host:6379/0", "rediss://…"),
    shared by every replica pointed at it. Default "sqlite"."""
    redis_prefix: str = "aiproc"
    """With a Redis store: the prefix of every key, so several deployments can share one
    Redis. Default "aiproc"."""
    lease_ttl: float = 15.0
    """With a Redis store: seconds a replica's claim on a running task lasts without being
    renewed (it is renewed every third of that); a dead replica's tasks run again elsewhere
    this long after it died. Default 15s."""
    result_ttl: float = 3600.0
    """Seconds an unacknowledged result (and its finished task) is kept. Default 1h."""
    idempotency_window: float = 3600.0
    """Seconds during which a repeated idempotency key returns the original task; at most
    result_ttl, since a key lives with its task. Default 1h."""
    max_crashes: int = 3
    """Times a task may be running when the server dies before it is dead-lettered
    (failed with code CRASHED) instead of run again. Default 3."""
    max_content_bytes: int = 1_048_576
    """Largest accepted TaskSpec.content, in UTF-8 bytes. Default 1 MiB."""
    shutdown_grace: float = 10.0
    """Seconds running tasks get to finish on SIGTERM/SIGINT. Default 10s."""
    reflection: bool = True
    """Serve gRPC server reflection. Default true."""
    event_loop: str = "uvloop"
    """The asyncio event loop `aiproc serve` runs on: "uvloop" (libuv; measured about 1.3x
    the tasks per second of the standard loop, see bench/) or "asyncio". Default "uvloop"."""
    tls_cert_file: str = ""
    """PEM certificate chain the server presents; with tls_key_file it turns TLS on.
    Default: none (plaintext, allowed only on loopback unless allow_insecure)."""
    tls_key_file: str = ""
    """PEM private key of tls_cert_file, unencrypted (readable by the server's user only)."""
    tls_client_ca_file: str = ""
    """PEM CA certificate(s) that sign client certificates. When set, every connection must
    present a client certificate they signed (mutual TLS), and the certificate's identity is
    the caller's tenant (see [auth] admin_identities). Default: none."""
    allow_insecure: bool = False
    """Serve a non-loopback address without TLS or without authentication anyway (logs a
    warning). Default false: such a config is refused at start."""
    # gRPC's own default (4 MiB) already holds the largest valid QueueTaskRequest with the
    # default max_content_bytes; anything bigger is refused before it is parsed.
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request message accepted (grpc.max_receive_message_length); a larger one is
    refused with RESOURCE_EXHAUSTED. Must be at least max_content_bytes plus 1.5 MiB, the
    most the other fields of a valid QueueTaskRequest can take. Default 4 MiB."""
    # gRPC's hard limit by default; set as both its soft and hard limits, because between
    # the two gRPC refuses a random share of calls, which no caller could reason about.
    # Room for the headers we read (client id, a W3C baggage of up to 8 KiB) and a token.
    max_metadata_bytes: int = 16 * 1024
    """Largest request metadata (all headers together) accepted; larger is refused with
    RESOURCE_EXHAUSTED. Default 16 KiB."""
    # A service scaled out to ~50 instances under one identity, each holding a result
    # stream and an event watch, fits; thousands of subscriptions (each buffering up to
    # 512 results) from one identity do not.
    max_streams_per_client: int = 100
    """StreamResults and WatchEvents calls one client identity may have open at once, on
    this server; the next one is refused with RESOURCE_EXHAUSTED. Default 100."""
    # Well above the calls one client keeps in flight on a channel (submit-batch: 64), low
    # enough that one connection cannot open unbounded concurrent calls. Calls beyond it
    # wait in the client until one ends; they are not refused.
    max_streams_per_connection: int = 256
    """Calls (HTTP/2 streams) one connection may have in flight at once
    (grpc.max_concurrent_streams); further calls wait on the client. Default 256."""


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """The server's HTTP/2 keepalive policy. Clients must ping no more often than
    min_client_ping_interval (the aiproc client pings every 60s during calls)."""

    # Finds clients that vanished without closing (a NAT dropped them, a host died) within
    # ping_interval + ping_timeout, freeing their stream slots and subscriptions.
    ping_interval: float = 60.0
    """Seconds between the server's pings on each connection (grpc.keepalive_time_ms).
    Default 60s."""
    ping_timeout: float = 20.0
    """Seconds the server waits for a ping's answer before closing the connection
    (grpc.keepalive_timeout_ms). Default 20s, gRPC's own."""
    # Half the aiproc client's 60s interval, so jitter never makes an honest ping a strike;
    # short enough for clients behind NATs and load balancers that drop connections idle for
    # a few minutes (AWS NLB: 350s), which gRPC's 5 minute default would punish.
    min_client_ping_interval: float = 30.0
    """Shortest interval between a client's pings the server tolerates while it sends no
    data (grpc.http2.min_ping_interval_without_data_ms); a faster ping is a strike.
    Default 30s."""
    # Clients of any language that keep an idle channel warm are common; at one ping per
    # min_client_ping_interval that costs nothing, so they are not punished for it.
    permit_without_calls: bool = True
    """Accept (and send) pings on a connection with no call in flight
    (grpc.keepalive_permit_without_calls). Default true."""
    max_ping_strikes: int = 2
    """Pings too soon the server tolerates before it closes the connection with GOAWAY
    (ENHANCE_YOUR_CALM, "too_many_pings"); 0 tolerates any number. Default 2, gRPC's own."""
    # An abandoned channel costs a socket and buffers; a working client's pauses between
    # calls are far shorter, and its channel reconnects by itself when it calls again.
    max_connection_idle: float = 1800.0
    """Seconds a connection may go without any call before the server closes it with
    GOAWAY (grpc.max_connection_idle_ms); 0 never. Default 30m."""
    # Off: a limit would cut the long StreamResults and WatchEvents calls every time it
    # passes. Behind an L4 load balancer, set it (e.g. 30m) to spread connections over
    # replicas again; clients then reconnect and receive unacknowledged results again.
    max_connection_age: float = 0.0
    """Seconds a connection may live before the server asks the client to reconnect
    (grpc.max_connection_age_ms); 0 never. Default 0."""
    max_connection_age_grace: float = 60.0
    """With max_connection_age: seconds calls in flight get to finish before the connection
    is closed (grpc.max_connection_age_grace_ms). Default 60s."""


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    """The guide's AiProcessorConfig, with its defaults."""

    num_workers: int = 4
    """Tasks processed at once. Default 4."""
    queue_size: int = 1000
    """Tasks that may wait; QueueTask answers RESOURCE_EXHAUSTED beyond. Default 1000."""
    max_concurrent_requests: int = 10
    """Provider calls in flight at once, over all workers. Default 10."""
    worker_timeout: float = 60.0
    """Seconds one task may be processed; caps each task's own timeout. Default 60s."""
    stream_results: bool = True
    """Serve StreamResults. When false, results are read with GetTask only. Default true."""
    llm_model: str = "gpt-3.5-turbo"
    """Model for providers that do not name one. Default gpt-3.5-turbo."""
    max_tokens: int = 2048
    """Completion tokens asked for. Default 2048."""
    temperature: float = 0.7
    """Sampling temperature, 0 to 2. Default 0.7."""
    rate_limit_rps: float = 10.0
    """Provider calls per second, over all workers (token bucket). Default 10."""
    rate_limit_burst: int = 1
    """Calls that may start back to back after an idle spell. Default 1."""
    max_retries: int = 3
    """Retries of a task after a retryable provider error. Default 3."""
    initial_backoff: float = 0.1
    """Seconds before the first retry. Default 100ms."""
    max_backoff: float = 30.0
    """Longest wait between retries, in seconds. Default 30s."""
    backoff_multiplier: float = 2.0
    """Growth of the wait from one retry to the next. Default 2.0."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    """Unique name; two keys of one vendor are two providers."""
    kind: str
    """openai, anthropic, azure_openai, ollama, gemini or offline."""
    base_url: str = ""
    """API root, e.g. https://api.openai.com/v1 or https://RESOURCE.openai.azure.com.

    Required for openai and azure_openai; the vendor's public address otherwise.
    """
    api_key_env: str = ""
    """Name of the environment variable holding the API key (never the key itself)."""
    api_key_file: str = ""
    """Path of a file holding the API key (e.g. a mounted Kubernetes or Docker secret), read
    once at start-up; its trailing newline is dropped. At most one of api_key_env and
    api_key_file; empty means none."""
    model: str = ""
    """Model to use; empty means [processor] llm_model."""
    priority: int = 1
    """Lower is preferred. Default 1."""
    weight: float = 1.0
    """Share of traffic for weighted selection. Default 1.0."""
    max_concurrent_requests: int = 10
    """Calls in flight to this provider at once. Default 10."""
    enabled: bool = True
    """Whether the provider takes traffic. Default true."""
    context_window: int = 0
    """Tokens the model accepts; 0 means known for the model, else 8192."""
    request_timeout: float = 0.0
    """Seconds one HTTP call may take; 0 means the task's remaining time."""
    deployment: str = ""
    """azure_openai only: the deployment name in the URL. Default: the model."""
    api_version: str = ""
    """azure_openai: the api-version query parameter (default 2024-10-21);
    anthropic: the anthropic-version header (default 2023-06-01)."""
    rps: float = 0.0
    """Calls per second to this provider (its own quota); 0 means no limit of its own."""
    tokens_per_minute: int = 0
    """Tokens per minute to this provider, estimated before each call and corrected
    from the usage it reports; 0 means no limit."""
    price_per_1k_input: float = 0.0
    """Cost of 1,000 prompt tokens, for least_cost selection; 0 means unknown."""
    price_per_1k_output: float = 0.0
    """Cost of 1,000 completion tokens, for least_cost selection; 0 means unknown."""


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    strategy: str = "priority"
    """How the next provider is picked: priority, round_robin, weighted, random,
    least_latency, least_errors, least_cost or least_busy. Default priority."""
    max_retries: int = 3
    """Switches to another provider within one attempt chain. Default 3."""
    retry_delay: float = 0.5
    """Seconds before trying the next provider after a failure. Default 500ms."""
    failback_delay: float = 60.0
    """Seconds a recovered provider must stay healthy before it gets traffic
    again beyond half-open probes. Default 60s."""
    health_check_threshold: int = 3
    """Consecutive failed health checks (or calls) that make a provider
    Unavailable. Default 3."""
    circuit_breaker_enabled: bool = True
    """One circuit breaker per provider. Default true."""


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """A preset, optionally with some of its values replaced (any field set here wins)."""

    preset: str = "default"
    """default (5 failures / 60s window / 10 min requests / 30s recovery / 3 probes),
    strict (3 / 30s / 5 / 15s / 2), lenient (10 / 120s / 20 / 60s / 5), or custom."""
    failure_threshold: int = 0
    """Failures in the window (with min_requests calls) or in a row that open it; 0: preset."""
    window: float = 0.0
    """Seconds of the sliding window; 0: preset."""
    min_requests: int = 0
    """Calls the window must hold before the failure count can open it; 0: preset."""
    recovery_timeout: float = 0.0
    """Seconds open before half-open probes are let through; 0: preset."""
    half_open_max_probes: int = 0
    """Probes in flight at once while half-open; 0: preset."""
    failure_rate: float = 0.0
    """Share of the window's calls that must have failed too (besides the count) for the
    window to open it; 0: 0.5. Failures in a row open it whatever the rate."""


@dataclass(frozen=True, slots=True)
class HealthConfig:
    enabled: bool = True
    """Run active health checks. Default true."""
    check_interval: float = 30.0
    """Seconds between checks of each provider. Default 30s."""
    timeout: float = 5.0
    """Seconds one check may take. Default 5s."""
    degraded_error_rate: float = 0.1
    """Error rate over the window at which a provider is Degraded. Default 0.1."""
    critical_error_rate: float = 0.5
    """Error rate over the window at which a provider is Critical. Default 0.5."""
    success_threshold: int = 2
    """Consecutive successes that bring an Unavailable provider back. Default 2."""
    window: float = 60.0
    """Seconds of outcomes the error rate is computed over. Default 60s."""


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Tracing, metrics and log format. The standard OTEL_* environment variables win
    over the values here (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, ...)."""

    enabled: bool = False
    """Export traces and metrics over OTLP. Also on when OTEL_EXPORTER_OTLP_ENDPOINT (or
    _TRACES_ENDPOINT) is set; OTEL_SDK_DISABLED=true turns everything off. Default false."""
    service_name: str = "aiproc"
    """service.name of every span and metric. Default aiproc."""
    otlp_endpoint: str = ""
    """Where to send OTLP, e.g. http://127.0.0.1:4317; empty means the exporter's default."""
    otlp_protocol: str = "grpc"
    """grpc or http/protobuf. Default grpc."""
    sampler_ratio: float = 1.0
    """Share of new traces sampled (parent-based); a caller's sampled trace is always kept.
    Default 1.0."""
    record_content: bool = False
    """Put prompt and completion text on spans. Default false. Keys are never recorded."""
    prometheus_listen: str = ""
    """host:port of a Prometheus scrape endpoint (/metrics); empty means none."""
    metrics_interval: float = 10.0
    """Seconds between OTLP metric exports. Default 10s."""
    log_format: str = "text"
    """text or json (one object per line, with trace_id and span_id). Default text."""


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """One tenant's own limits, from a [[quotas.tenants]] entry."""

    tenant: str
    """The caller identity it applies to."""
    max_queued: int = 0
    """Tasks this tenant may have waiting; 0 means quotas.max_queued_per_tenant."""
    rate_share: float = 0.0
    """This tenant's share of processor.rate_limit_rps, in (0, 1]; 0 means
    quotas.rate_share_per_tenant. Default 0."""


@dataclass(frozen=True, slots=True)
class QuotasConfig:
    """Per-tenant limits. A tenant is a caller identity: its API key's or certificate's
    tenant, or in open mode the aiproc-client-id it sends.

    Whatever the quotas, tenants take turns within a priority level (fair
    queuing), so one tenant's backlog delays another's task by at most one
    task of its own."""

    max_queued_per_tenant: int = 0
    """Tasks any one tenant may have waiting; beyond, its QueueTask answers
    RESOURCE_EXHAUSTED while other tenants are still admitted. 0 means only
    processor.queue_size bounds it. Default 0."""
    rate_share_per_tenant: float = 1.0
    """The share of processor.rate_limit_rps any one tenant may start tasks at, in (0, 1]:
    with share s a tenant starts at most s * rate_limit_rps tasks per second, after a burst
    of max(1, s * rate_limit_burst). A tenant over its share is passed over (its tasks wait,
    other tenants' run); it never holds a worker. 1.0 means no cap beyond the global limit.
    Default 1.0."""
    tenants: tuple[TenantQuota, ...] = ()
    """Tenants with limits of their own ([[quotas.tenants]] tenant = "...", max_queued = N,
    rate_share = S)."""

    def max_queued(self, tenant: str) -> int:
        """The most tasks `tenant` may have waiting; 0 for no limit of its own."""
        for quota in self.tenants:
            if quota.tenant == tenant and quota.max_queued:
                return quota.max_queued
        return self.max_queued_per_tenant

    def rate_share(self, tenant: str) -> float:
        """The share of the rate limit `tenant` may start tasks at; 1.0 for no cap."""
        for quota in self.tenants:
            if quota.tenant == tenant and quota.rate_share:
                return quota.rate_share
        return self.rate_share_per_tenant


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    """One API key: a caller that sends its token acts as `tenant` with `role`.

    Only the token's hash is configured. A fast hash is right here, unlike for passwords:
    a token is 256 random bits, so there is no dictionary to try and no brute force that
    a slow hash would meaningfully slow down; SHA-256 keeps the check to a microsecond.
    """

    name: str
    """A label for logs and for revoking the key (never the key itself); unique."""
    tenant: str
    """The client identity the caller acts as: it sees only this tenant's tasks."""
    hash: str
    """The token's SHA-256 as "sha256:" and 64 lowercase hex digits, as `aiproc keys create`
    prints it."""
    role: str = "client"
    """client (its own tenant's tasks) or admin (also Stats, WatchEvents, and any tenant
    named in aiproc-client-id). Default client."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may call. With no api_keys and no server.tls_client_ca_file the server is open:
    every caller is an admin acting as the tenant its aiproc-client-id names."""

    api_keys: tuple[ApiKeyConfig, ...] = ()
    """Bearer tokens the server accepts ([[auth.api_keys]] tables)."""
    admin_identities: tuple[str, ...] = ()
    """Client-certificate identities (with mutual TLS) that are admins; every other
    certificate is a client of the tenant its identity names."""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    processor: ProcessorConfig = ProcessorConfig()
    providers: tuple[ProviderConfig, ...] = ()
    quotas: QuotasConfig = QuotasConfig()
    failover: FailoverConfig = FailoverConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    health: HealthConfig = HealthConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    auth: AuthConfig = AuthConfig()
    keepalive: KeepaliveConfig = KeepaliveConfig()
    log_level: str = "INFO"


def parse_duration(value: object, field_name: str) -> float:
    """Seconds from a number (seconds) or a string like "100ms", "30s", "5m", "1h"."""
    if isinstance(value, bool):
        raise ConfigError(field_name, f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ConfigError(field_name, f"expected a duration like '100ms' or '30s', got {value!r}")
    if seconds < 0:
        raise ConfigError(field_name, "must not be negative")
    return seconds


_DURATION_FIELDS = {
    "result_ttl",
    "lease_ttl",
    "idempotency_window",
    "shutdown_grace",
    "worker_timeout",
    "initial_backoff",
    "max_backoff",
    "retry_delay",
    "failback_delay",
    "request_timeout",
    "window",
    "recovery_timeout",
    "check_interval",
    "timeout",
    "metrics_interval",
    "ping_interval",
    "ping_timeout",
    "min_client_ping_interval",
    "max_connection_idle",
    "max_connection_age",
    "max_connection_age_grace",
}


def _coerce(section: str, name: str, annotation: str, value: object) -> object:
    where = f"{section}.{name}"
    if name in _DURATION_FIELDS:
        return parse_duration(value, where)
    if annotation == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if annotation == "int":
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(where, f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if annotation == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(where, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a string, got {value!r}")
    return value


def _build(cls: type[_T], section: str, raw: Mapping[str, Any], base: _T | None = None) -> _T:
    if not isinstance(raw, Mapping):
        raise ConfigError(section, f"expected a table, got {raw!r}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}", "unknown field")
        values[key] = _coerce(section, key, str(known[key].type), value)
    if base is not None:
        return replace(base, **values)  # type: ignore[type-var]
    try:
        return cls(**values)
    except TypeError as exc:
        missing = [n for n, f in known.items() if f.default is MISSING and n not in raw]
        raise ConfigError(f"{section}.{missing[0] if missing else '?'}", "required") from exc


def _build_auth(raw: object) -> AuthConfig:
    """[auth]: an array of [[auth.api_keys]] tables and a list of admin identities."""
    if not isinstance(raw, Mapping):
        raise ConfigError("auth", f"expected a table, got {raw!r}")
    for key in raw:
        if key not in ("api_keys", "admin_identities"):
            raise ConfigError(f"auth.{key}", "unknown field")
    keys_raw = raw.get("api_keys", [])
    if not isinstance(keys_raw, list):
        raise ConfigError("auth.api_keys", "expected an array of tables ([[auth.api_keys]])")
    identities = raw.get("admin_identities", [])
    if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
        raise ConfigError("auth.admin_identities", "expected a list of strings")
    return AuthConfig(
        api_keys=tuple(
            _build(ApiKeyConfig, f"auth.api_keys[{i}]", entry) for i, entry in enumerate(keys_raw)
        ),
        admin_identities=tuple(identities),
    )


def _validate_server(cfg: ServerConfig) -> None:
    host, sep, port = cfg.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError("server.listen", f"expected HOST:PORT, got {cfg.listen!r}")
    if cfg.store not in ("memory", "sqlite") and not cfg.store.startswith(REDIS_SCHEMES):
        raise ConfigError(
            "server.store",
            # Only the scheme: a URL may hold a password.
            f"unsupported store {cfg.store.partition('://')[0]!r};"
            " supported: sqlite, memory, redis://HOST:PORT/DB",
        )
    if not cfg.redis_prefix or any(c.isspace() for c in cfg.redis_prefix):
        raise ConfigError("server.redis_prefix", "must be non-empty, without spaces")
    if cfg.event_loop not in EVENT_LOOPS:
        raise ConfigError("server.event_loop", f"expected one of {', '.join(EVENT_LOOPS)}")
    if cfg.lease_ttl < 1:
        raise ConfigError("server.lease_ttl", "must be at least 1 second")
    if not 0 < cfg.idempotency_window <= cfg.result_ttl:
        raise ConfigError(
            "server.idempotency_window",
            "must be positive and at most result_ttl (a key is kept as long as its task)",
        )
    if cfg.max_crashes < 1:
        raise ConfigError("server.max_crashes", "must be at least 1")
    if cfg.result_ttl <= 0:
        raise ConfigError("server.result_ttl", "must be positive")
    if cfg.max_content_bytes <= 0:
        raise ConfigError("server.max_content_bytes", "must be positive")
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        missing = "tls_key_file" if cfg.tls_cert_file else "tls_cert_file"
        raise ConfigError(f"server.{missing}", "TLS needs both tls_cert_file and tls_key_file")
    if cfg.tls_client_ca_file and not cfg.tls_cert_file:
        raise ConfigError(
            "server.tls_client_ca_file",
            "mutual TLS needs TLS: set tls_cert_file and tls_key_file too",
        )

    if cfg.max_message_bytes < cfg.max_content_bytes + QUEUE_REQUEST_OVERHEAD_BYTES:
        raise ConfigError(
            "server.max_message_bytes",
            f"must be at least max_content_bytes + {QUEUE_REQUEST_OVERHEAD_BYTES} bytes"
            f" ({cfg.max_content_bytes + QUEUE_REQUEST_OVERHEAD_BYTES}), the largest valid"
            " QueueTaskRequest",
        )
    if cfg.max_metadata_bytes < MIN_METADATA_BYTES:
        raise ConfigError(
            "server.max_metadata_bytes", f"must be at least {MIN_METADATA_BYTES} bytes"
        )
    for name in ("max_streams_per_client", "max_streams_per_connection"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"server.{name}", "must be at least 1")


def is_loopback(host: str) -> bool:
    """Whether `host` (of a listen address) reaches this machine only: localhost, 127.0.0.0/8
    or ::1. Any other name may resolve to a public address, so it counts as exposed."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_risks(config: Config) -> list[str]:
    """What a server listening beyond loopback would lack: TLS, authentication, or both."""
    if is_loopback(config.server.listen.rpartition(":")[0]):
        return []
    risks = []
    if not config.server.tls_cert_file:
        risks.append(
            "no TLS (server.tls_cert_file, tls_key_file), so traffic and tokens are"
            " readable on the network"
        )
    if not config.auth.api_keys and not config.server.tls_client_ca_file:
        risks.append(
            "no authentication ([[auth.api_keys]] or server.tls_client_ca_file), so"
            " any caller acts as an admin"
        )
    return risks


def _validate_exposure(config: Config) -> None:
    risks = exposure_risks(config)
    if risks and not config.server.allow_insecure:
        raise ConfigError(
            "server.listen",
            f"{config.server.listen} is not a loopback address and the server has "
            + " and ".join(risks)
            + "; configure them, or set server.allow_insecure = true to serve it anyway",
        )


def validate_api_key(key: ApiKeyConfig, where: str) -> None:
    """Raises ConfigError (field `{where}.<name>`) for a malformed [[auth.api_keys]] entry."""
    if not TENANT_RE.match(key.tenant):
        raise ConfigError(f"{where}.tenant", f"must be {TENANT_RULE}")
    if key.role not in ROLES:
        raise ConfigError(f"{where}.role", f"unknown role {key.role!r}; known: client, admin")
    if not _KEY_HASH_RE.match(key.hash):
        raise ConfigError(
            f"{where}.hash",
            "expected 'sha256:' and 64 lowercase hex digits, as `aiproc keys create` prints"
            " (never the token itself)",
        )
    if not _NAME_RE.match(key.name):
        raise ConfigError(
            f"{where}.name", "must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
        )


def _validate_auth(cfg: AuthConfig, server: ServerConfig) -> None:
    names: set[str] = set()
    hashes: set[str] = set()
    for index, key in enumerate(cfg.api_keys):
        where = f"auth.api_keys[{index}]"
        validate_api_key(key, where)
        if key.name in names:
            raise ConfigError(f"{where}.name", f"duplicate name {key.name!r}")
        names.add(key.name)
        if key.hash in hashes:
            raise ConfigError(f"{where}.hash", "duplicate: another entry has the same key")
        hashes.add(key.hash)
    if cfg.admin_identities and not server.tls_client_ca_file:
        raise ConfigError(
            "auth.admin_identities",
            "needs server.tls_client_ca_file: only client certificates carry these identities",
        )
    for index, identity in enumerate(cfg.admin_identities):
        if not TENANT_RE.match(identity):
            raise ConfigError(f"auth.admin_identities[{index}]", f"must be {TENANT_RULE}")


def _validate_keepalive(cfg: KeepaliveConfig) -> None:
    for name in ("ping_interval", "ping_timeout", "min_client_ping_interval"):
        if getattr(cfg, name) < _MIN_KEEPALIVE_SECONDS:
            raise ConfigError(f"keepalive.{name}", "must be at least 1ms")
    if cfg.max_ping_strikes < 0:
        raise ConfigError("keepalive.max_ping_strikes", "must not be negative")
    for name in (
        "ping_interval",
        "ping_timeout",
        "min_client_ping_interval",
        "max_connection_idle",
        "max_connection_age",
        "max_connection_age_grace",
    ):
        # gRPC takes these as int milliseconds.
        if getattr(cfg, name) * 1000 > _MAX_GRPC_MILLIS:
            raise ConfigError(f"keepalive.{name}", "must be under 24 days (gRPC's int range)")


def _validate_processor(cfg: ProcessorConfig) -> None:
    positive_ints = ("num_workers", "queue_size", "max_concurrent_requests", "max_tokens")
    for name in positive_ints:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"processor.{name}", "must be at least 1")
    if cfg.rate_limit_burst < 1:
        raise ConfigError("processor.rate_limit_burst", "must be at least 1")
    if cfg.max_retries < 0:
        raise ConfigError("processor.max_retries", "must not be negative")
    if cfg.worker_timeout <= 0:
        raise ConfigError("processor.worker_timeout", "must be positive")
    if not cfg.rate_limit_rps > 0:
        raise ConfigError("processor.rate_limit_rps", "must be positive (requests per second)")
    if not 0.0 <= cfg.temperature <= 2.0:
        raise ConfigError("processor.temperature", "must be between 0 and 2")
    if cfg.initial_backoff <= 0:
        raise ConfigError("processor.initial_backoff", "must be positive")
    if cfg.max_backoff < cfg.initial_backoff:
        raise ConfigError("processor.max_backoff", "must be at least initial_backoff")
    if cfg.backoff_multiplier < 1.0:
        raise ConfigError("processor.backoff_multiplier", "must be at least 1.0")
    if not cfg.llm_model:
        raise ConfigError("processor.llm_model", "must not be empty")


def _validate_provider(index: int, cfg: ProviderConfig) -> None:
    where = f"providers[{index}]"
    if not _NAME_RE.match(cfg.name):
        raise ConfigError(
            f"{where}.name", "must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    if cfg.kind not in PROVIDER_KINDS:
        raise ConfigError(
            f"{where}.kind", f"unknown kind {cfg.kind!r}; known: {', '.join(PROVIDER_KINDS)}"
        )
    if cfg.kind in ("openai", "azure_openai") and not cfg.base_url:
        raise ConfigError(f"{where}.base_url", f"required for kind {cfg.kind}")
    if cfg.base_url and not cfg.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.base_url", "must be an http:// or https:// URL")
    if cfg.api_key_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", cfg.api_key_env):
        raise ConfigError(
            f"{where}.api_key_env", "must be the NAME of an environment variable, not a key"
        )
    if cfg.api_key_env and cfg.api_key_file:
        raise ConfigError(f"{where}.api_key_file", "set api_key_env or api_key_file, not both")
    for name in ("rps", "tokens_per_minute", "price_per_1k_input", "price_per_1k_output"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{where}.{name}", "must not be negative")
    if cfg.weight <= 0:
        raise ConfigError(f"{where}.weight", "must be positive")
    if cfg.max_concurrent_requests < 1:
        raise ConfigError(f"{where}.max_concurrent_requests", "must be at least 1")
    if cfg.context_window < 0:
        raise ConfigError(f"{where}.context_window", "must not be negative")


def _validate_failover(cfg: FailoverConfig) -> None:
    if cfg.strategy not in FAILOVER_STRATEGIES:
        raise ConfigError(
            "failover.strategy",
            f"unknown strategy {cfg.strategy!r}; known: {', '.join(FAILOVER_STRATEGIES)}",
        )
    if cfg.max_retries < 0:
        raise ConfigError("failover.max_retries", "must not be negative")
    if cfg.health_check_threshold < 1:
        raise ConfigError("failover.health_check_threshold", "must be at least 1")


def _validate_breaker(cfg: CircuitBreakerConfig) -> None:
    if cfg.preset not in BREAKER_PRESETS:
        raise ConfigError(
            "circuit_breaker.preset",
            f"unknown preset {cfg.preset!r}; known: {', '.join(BREAKER_PRESETS)}",
        )
    if not 0 <= cfg.failure_rate <= 1:
        raise ConfigError("circuit_breaker.failure_rate", "must be between 0 and 1")
    values = ("failure_threshold", "window", "min_requests", "recovery_timeout")
    for name in (*values, "half_open_max_probes"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"circuit_breaker.{name}", "must not be negative")
    if cfg.preset == "custom":
        for name in (*values, "half_open_max_probes"):
            if not getattr(cfg, name):
                raise ConfigError(f"circuit_breaker.{name}", "required with preset = custom")


def _validate_telemetry(cfg: TelemetryConfig) -> None:
    if cfg.otlp_protocol not in ("grpc", "http/protobuf"):
        raise ConfigError("telemetry.otlp_protocol", "must be grpc or http/protobuf")
    if cfg.otlp_endpoint and not cfg.otlp_endpoint.startswith(("http://", "https://")):
        raise ConfigError("telemetry.otlp_endpoint", "must be an http:// or https:// URL")
    if not 0.0 <= cfg.sampler_ratio <= 1.0:
        raise ConfigError("telemetry.sampler_ratio", "must be between 0 and 1")
    if cfg.prometheus_listen:
        host, sep, port = cfg.prometheus_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError("telemetry.prometheus_listen", "expected HOST:PORT")
    if cfg.metrics_interval <= 0:
        raise ConfigError("telemetry.metrics_interval", "must be positive")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("telemetry.log_format", "must be text or json")
    if not cfg.service_name:
        raise ConfigError("telemetry.service_name", "must not be empty")


def _validate_health(cfg: HealthConfig) -> None:
    if cfg.check_interval <= 0:
        raise ConfigError("health.check_interval", "must be positive")
    if cfg.timeout <= 0:
        raise ConfigError("health.timeout", "must be positive")
    if cfg.window <= 0:
        raise ConfigError("health.window", "must be positive")
    if not 0 < cfg.degraded_error_rate <= cfg.critical_error_rate <= 1:
        raise ConfigError(
            "health.critical_error_rate",
            "need 0 < degraded_error_rate <= critical_error_rate <= 1",
        )
    if cfg.success_threshold < 1:
        raise ConfigError("health.success_threshold", "must be at least 1")


def _env_overrides(
    env: Mapping[str, str],
    section: str,
    cls: type[Any],
    exclude: frozenset[str] | set[str] = frozenset(),
) -> dict[str, str]:
    """AIPROC_<SECTION>_<FIELD> variables, e.g. AIPROC_PROCESSOR_NUM_WORKERS=8."""
    prefix = f"AIPROC_{section.upper()}_"
    names = {f.name for f in fields(cls)} - exclude
    found: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(prefix):
            name = key[len(prefix) :].lower()
            if name not in names:
                raise ConfigError(key, f"unknown field {section}.{name}")
            found[name] = value
    return found


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
) -> Config:
    """Reads the TOML file (if any), applies AIPROC_* variables, then flag overrides.

    `path` falls back to $AIPROC_CONFIG. Raises ConfigError naming the field.
    """
    env = os.environ if env is None else env
    path = path or env.get("AIPROC_CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    known_sections = {
        "server",
        "processor",
        "providers",
        "quotas",
        "failover",
        "circuit_breaker",
        "health",
        "telemetry",
        "auth",
        "keepalive",
    }
    unknown = set(raw) - known_sections - {"log_level"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown section")

    sections: dict[str, Any] = {}
    for name, cls in (
        ("server", ServerConfig),
        ("processor", ProcessorConfig),
        ("failover", FailoverConfig),
        ("circuit_breaker", CircuitBreakerConfig),
        ("health", HealthConfig),
        ("telemetry", TelemetryConfig),
        ("keepalive", KeepaliveConfig),
    ):
        merged = dict(raw.get(name, {})) if isinstance(raw.get(name, {}), Mapping) else raw[name]
        if isinstance(merged, dict):
            merged.update(_env_overrides(env, name, cls))
            merged.update((overrides or {}).get(name, {}))
        sections[name] = _build(cls, name, merged)

    providers_raw = raw.get("providers", [])
    if not isinstance(providers_raw, list):
        raise ConfigError("providers", "expected an array of tables ([[providers]])")
    providers = tuple(
        _build(ProviderConfig, f"providers[{i}]", entry) for i, entry in enumerate(providers_raw)
    )
    quotas = _quotas(raw.get("quotas", {}), env, overrides)
    for key in env:
        if key.startswith("AIPROC_AUTH_"):
            raise ConfigError(key, "[auth] is read from the config file only")
    auth = _build_auth(raw.get("auth", {}))
    log_level = str(env.get("AIPROC_LOG_LEVEL", raw.get("log_level", "INFO"))).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level", f"expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    config = Config(
        server=sections["server"],
        processor=sections["processor"],
        providers=providers,
        quotas=quotas,
        failover=sections["failover"],
        circuit_breaker=sections["circuit_breaker"],
        health=sections["health"],
        telemetry=sections["telemetry"],
        auth=auth,
        keepalive=sections["keepalive"],
        log_level=log_level,
    )
    validate(config)
    return config


def _quotas(
    raw: object, env: Mapping[str, str], overrides: Mapping[str, Mapping[str, object]] | None
) -> QuotasConfig:
    """The [quotas] table: its scalar fields as any section's, its tenants as an array."""
    if not isinstance(raw, Mapping):
        raise ConfigError("quotas", f"expected a table, got {raw!r}")
    scalars = {k: v for k, v in raw.items() if k != "tenants"}
    scalars.update(_env_overrides(env, "quotas", QuotasConfig, exclude={"tenants"}))
    scalars.update((overrides or {}).get("quotas", {}))
    entries = raw.get("tenants", [])
    if not isinstance(entries, list):
        raise ConfigError("quotas.tenants", "expected an array of tables ([[quotas.tenants]])")
    tenants = tuple(
        _build(TenantQuota, f"quotas.tenants[{i}]", entry) for i, entry in enumerate(entries)
    )
    return replace(_build(QuotasConfig, "quotas", scalars), tenants=tenants)


def _validate_quotas(cfg: QuotasConfig) -> None:
    if cfg.max_queued_per_tenant < 0:
        raise ConfigError("quotas.max_queued_per_tenant", "must not be negative")
    if not 0 < cfg.rate_share_per_tenant <= 1:
        raise ConfigError(
            "quotas.rate_share_per_tenant", "must be above 0 and at most 1 (1: no cap)"
        )
    seen: set[str] = set()
    for index, quota in enumerate(cfg.tenants):
        where = f"quotas.tenants[{index}]"
        if not TENANT_RE.match(quota.tenant):
            raise ConfigError(f"{where}.tenant", TENANT_RULE)
        if quota.tenant in seen:
            raise ConfigError(f"{where}.tenant", f"duplicate tenant {quota.tenant!r}")
        seen.add(quota.tenant)
        if quota.max_queued < 0:
            raise ConfigError(f"{where}.max_queued", "must not be negative")
        if not 0 <= quota.rate_share <= 1:
            raise ConfigError(
                f"{where}.rate_share", "must be between 0 and 1 (0: rate_share_per_tenant)"
            )


def validate(config: Config) -> None:
    """Raises ConfigError for the first invalid field."""
    _validate_server(config.server)
    _validate_processor(config.processor)
    _validate_failover(config.failover)
    _validate_breaker(config.circuit_breaker)
    _validate_health(config.health)
    _validate_telemetry(config.telemetry)
    _validate_quotas(config.quotas)
    _validate_auth(config.auth, config.server)
    _validate_exposure(config)
    _validate_keepalive(config.keepalive)
    seen: set[str] = set()
    for index, provider in enumerate(config.providers):
        _validate_provider(index, provider)
        if provider.name in seen:
            raise ConfigError(f"providers[{index}].name", f"duplicate name {provider.name!r}")
        seen.add(provider.name)
