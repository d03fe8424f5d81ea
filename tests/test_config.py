"""Config: TOML, environment and flags, validated once with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiproc.server.config import ConfigError, load_config, parse_duration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aiproc.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_guides() -> None:
    config = load_config(env={})
    p = config.processor
    assert (p.num_workers, p.queue_size, p.max_concurrent_requests) == (4, 1000, 10)
    assert (p.worker_timeout, p.stream_results, p.llm_model) == (60.0, True, "gpt-3.5-turbo")
    assert (p.max_tokens, p.temperature, p.rate_limit_rps) == (2048, 0.7, 10.0)
    assert (p.initial_backoff, p.max_backoff, p.backoff_multiplier) == (0.1, 30.0, 2.0)
    assert config.server.listen == "127.0.0.1:50051"
    assert config.providers == ()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
listen = "127.0.0.1:6000"
[processor]
num_workers = 8
worker_timeout = "90s"
initial_backoff = "250ms"
[[providers]]
name = "primary"
kind = "openai"
base_url = "http://127.0.0.1:8080/v1"
api_key_env = "PRIMARY_KEY"
[[providers]]
name = "secondary"
kind = "openai"
base_url = "http://127.0.0.1:8081/v1"
priority = 2
[failover]
strategy = "round_robin"
retry_delay = "1s"
""",
    )
    env = {"AIPROC_CONFIG": str(path), "AIPROC_PROCESSOR_NUM_WORKERS": "16"}
    config = load_config(env=env, overrides={"server": {"listen": "127.0.0.1:7000"}})
    assert config.server.listen == "127.0.0.1:7000"
    assert config.processor.num_workers == 16
    assert config.processor.worker_timeout == 90.0
    assert config.processor.initial_backoff == 0.25
    assert [p.name for p in config.providers] == ["primary", "secondary"]
    assert config.providers[1].priority == 2
    assert config.failover.strategy == "round_robin"
    assert config.failover.retry_delay == 1.0


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[processor]\nrate_limit_rps = 0", "processor.rate_limit_rps"),
        ("[processor]\nrate_limit_rps = -5.0", "processor.rate_limit_rps"),
        ("[processor]\nnum_workers = 0", "processor.num_workers"),
        ("[processor]\nqueue_size = 'big'", "processor.queue_size"),
        ("[processor]\ntemperature = 3.5", "processor.temperature"),
        ("[processor]\nworker_timeout = '-1s'", "processor.worker_timeout"),
        ("[processor]\nworker_timeout = 'soon'", "processor.worker_timeout"),
        ("[processor]\nmax_backoff = '10ms'", "processor.max_backoff"),
        ("[processor]\nbackoff_multiplier = 0.5", "processor.backoff_multiplier"),
        ("[processor]\nnum_wokers = 3", "processor.num_wokers"),
        ("[server]\nlisten = 'nowhere'", "server.listen"),
        ("[server]\nstore = 'mongodb://x'", "server.store"),
        ("[server]\nredis_prefix = ''", "server.redis_prefix"),
        ("[server]\nredis_prefix = 'two words'", "server.redis_prefix"),
        ("[server]\nlease_ttl = '100ms'", "server.lease_ttl"),
        ("[server]\nevent_loop = 'trio'", "server.event_loop"),
        ("[failover]\nstrategy = 'fastest'", "failover.strategy"),
        ("[quotas]\nmax_queued_per_tenant = -1", "quotas.max_queued_per_tenant"),
        ("[quotas]\ntenants = 'acme'", "quotas.tenants"),
        ("[[quotas.tenants]]\nmax_queued = 5", "quotas.tenants[0].tenant"),
        ("[[quotas.tenants]]\ntenant = 'a b'", "quotas.tenants[0].tenant"),
        ("[[quotas.tenants]]\ntenant = 'a'\nmax_queued = -2", "quotas.tenants[0].max_queued"),
        ("[[quotas.tenants]]\ntenant = 'a'\nburst = 2", "quotas.tenants[0].burst"),
        ("[quotas]\nrate_share_per_tenant = 0", "quotas.rate_share_per_tenant"),
        ("[quotas]\nrate_share_per_tenant = 1.5", "quotas.rate_share_per_tenant"),
        ("[quotas]\nrate_share_per_tenant = nan", "quotas.rate_share_per_tenant"),
        ("[quotas]\nrate_share_per_tenant = 'half'", "quotas.rate_share_per_tenant"),
        ("[[quotas.tenants]]\ntenant = 'a'\nrate_share = -0.1", "quotas.tenants[0].rate_share"),
        ("[[quotas.tenants]]\ntenant = 'a'\nrate_share = 2", "quotas.tenants[0].rate_share"),
        (
            "[[quotas.tenants]]\ntenant = 'a'\n[[quotas.tenants]]\ntenant = 'a'",
            "quotas.tenants[1].tenant",
        ),
        ("[server]\nmax_message_bytes = 2000000", "server.max_message_bytes"),
        (
            "[server]\nmax_content_bytes = 4000000\n",  # the default message limit is too small
            "server.max_message_bytes",
        ),
        ("[server]\nmax_metadata_bytes = 100", "server.max_metadata_bytes"),
        ("[server]\nmax_streams_per_client = 0", "server.max_streams_per_client"),
        ("[server]\nmax_streams_per_connection = 0", "server.max_streams_per_connection"),
        ("[keepalive]\nping_interval = 0", "keepalive.ping_interval"),
        ("[keepalive]\nmin_client_ping_interval = 'often'", "keepalive.min_client_ping_interval"),
        ("[keepalive]\nmax_ping_strikes = -1", "keepalive.max_ping_strikes"),
        ("[keepalive]\nmax_connection_age = '30d'", "keepalive.max_connection_age"),
        ("[keepalive]\nmax_connection_age = '1000h'", "keepalive.max_connection_age"),
        ("[surprise]\nx = 1", "surprise"),
        ("[[providers]]\nname = 'a'\nkind = 'cohere'", "providers[0].kind"),
        ("[[providers]]\nkind = 'offline'", "providers[0].name"),
        ("[[providers]]\nname = 'a'\nkind = 'openai'", "providers[0].base_url"),
        (
            "[[providers]]\nname = 'a'\nkind = 'openai'\nbase_url = 'http://x'\n"
            "api_key_env = 'sk-live-123'",
            "providers[0].api_key_env",
        ),
        (
            "[[providers]]\nname = 'a'\nkind = 'offline'\n"
            "[[providers]]\nname = 'a'\nkind = 'offline'",
            "providers[1].name",
        ),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, toml: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, toml), env={})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"invalid config: {field}:")


def test_quotas_have_a_default_and_tenants_of_their_own(tmp_path: Path) -> None:
    toml = """
[quotas]
max_queued_per_tenant = 100

[[quotas.tenants]]
tenant = "big-customer"
max_queued = 5000

[[quotas.tenants]]
tenant = "uses-the-default"
"""
    config = load_config(write(tmp_path, toml), env={"AIPROC_QUOTAS_MAX_QUEUED_PER_TENANT": "200"})
    assert config.quotas.max_queued("big-customer") == 5000
    assert config.quotas.max_queued("uses-the-default") == 200
    assert config.quotas.max_queued("anyone") == 200
    assert load_config(env={}).quotas.max_queued("anyone") == 0


def test_rate_shares_have_a_default_and_tenants_of_their_own(tmp_path: Path) -> None:
    toml = """
[quotas]
rate_share_per_tenant = 0.5

[[quotas.tenants]]
tenant = "batch"
rate_share = 0.1

[[quotas.tenants]]
tenant = "interactive"
rate_share = 1.0

[[quotas.tenants]]
tenant = "uses-the-default"
max_queued = 10
"""
    env = {"AIPROC_QUOTAS_RATE_SHARE_PER_TENANT": "0.25"}
    config = load_config(write(tmp_path, toml), env=env)
    assert config.quotas.rate_share("batch") == 0.1
    assert config.quotas.rate_share("interactive") == 1.0
    assert config.quotas.rate_share("uses-the-default") == 0.25
    assert config.quotas.rate_share("anyone") == 0.25
    assert load_config(env={}).quotas.rate_share("anyone") == 1.0


def test_a_redis_url_is_a_store(tmp_path: Path) -> None:
    text = (
        "[server]\nstore = 'redis://:secret@10.0.0.5:6379/2'\n"
        "redis_prefix = 'prod'\nlease_ttl = '30s'"
    )
    config = load_config(write(tmp_path, text), env={})
    assert config.server.store == "redis://:secret@10.0.0.5:6379/2"
    assert config.server.redis_prefix == "prod"
    assert config.server.lease_ttl == 30.0


def test_unknown_environment_override_is_refused() -> None:
    with pytest.raises(ConfigError, match="AIPROC_PROCESSOR_WORKERS"):
        load_config(env={"AIPROC_PROCESSOR_WORKERS": "3"})


def test_missing_file_and_bad_toml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[processor\n"), env={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("100ms", 0.1), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2", 2.0), (1.5, 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "f") == pytest.approx(seconds)


KEY_HASH = "sha256:" + "ab" * 32
OTHER_HASH = "sha256:" + "cd" * 32


def key_entry(
    name: str = "app", tenant: str = "billing", hash_: str = KEY_HASH, **more: str
) -> str:
    extra = "".join(f"{field} = {value!r}\n" for field, value in more.items())
    return f"[[auth.api_keys]]\nname = {name!r}\ntenant = {tenant!r}\nhash = {hash_!r}\n{extra}"


def test_api_keys_and_tls_settings_load(tmp_path: Path) -> None:
    text = (
        "[server]\nlisten = '0.0.0.0:50051'\ntls_cert_file = 'server.crt'\n"
        "tls_key_file = 'server.key'\ntls_client_ca_file = 'clients.pem'\n"
        "[auth]\nadmin_identities = ['ops-box']\n"
        + key_entry()
        + key_entry("ops", "ops", OTHER_HASH, role="admin")
    )
    config = load_config(write(tmp_path, text), env={"AIPROC_SERVER_ALLOW_INSECURE": "false"})
    assert [(k.name, k.tenant, k.role) for k in config.auth.api_keys] == [
        ("app", "billing", "client"),  # role defaults to the least privilege
        ("ops", "ops", "admin"),
    ]
    assert config.auth.admin_identities == ("ops-box",)
    assert config.server.tls_client_ca_file == "clients.pem"
    assert config.server.allow_insecure is False


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        (key_entry(role="root"), "auth.api_keys[0].role"),
        (key_entry(hash_="sha256:xyz"), "auth.api_keys[0].hash"),
        (key_entry(hash_="aiproc_" + "a" * 43), "auth.api_keys[0].hash"),
        (key_entry(hash_="sha256:" + "AB" * 32), "auth.api_keys[0].hash"),
        (key_entry(tenant="two words"), "auth.api_keys[0].tenant"),
        (key_entry(tenant=""), "auth.api_keys[0].tenant"),
        (key_entry(name="-x"), "auth.api_keys[0].name"),
        (key_entry() + key_entry("other"), "auth.api_keys[1].hash"),
        (key_entry() + key_entry(hash_=OTHER_HASH), "auth.api_keys[1].name"),
        ("[[auth.api_keys]]\nname = 'a'\ntenant = 't'", "auth.api_keys[0].hash"),
        (key_entry(secret="x"), "auth.api_keys[0].secret"),
        ("[auth]\napi_keys = 'x'", "auth.api_keys"),
        ("[auth]\nadmin_identities = 'ops'", "auth.admin_identities"),
        ("[auth]\nusers = []", "auth.users"),
        ("[auth]\nadmin_identities = ['ops']", "auth.admin_identities"),
        (
            "[server]\ntls_cert_file = 'c'\ntls_key_file = 'k'\ntls_client_ca_file = 'ca'\n"
            "[auth]\nadmin_identities = ['ops box']",
            "auth.admin_identities[0]",
        ),
        ("[server]\ntls_cert_file = 'c'", "server.tls_key_file"),
        ("[server]\ntls_key_file = 'k'", "server.tls_cert_file"),
        ("[server]\ntls_client_ca_file = 'ca'", "server.tls_client_ca_file"),
    ],
)
def test_invalid_auth_config_names_the_field(tmp_path: Path, toml: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, toml), env={})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"invalid config: {field}:")


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:1", "127.3.4.5:1", "localhost:1", "[::1]:1", "LOCALHOST:0"]
)
def test_loopback_may_serve_plaintext_without_auth(listen: str) -> None:
    assert load_config(env={}, overrides={"server": {"listen": listen}}).server.listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:1", "aiproc:1"])
def test_beyond_loopback_plaintext_or_no_auth_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={"server": {"listen": listen}})
    assert caught.value.field == "server.listen"
    assert "no TLS" in caught.value.reason
    assert "no authentication" in caught.value.reason
    assert "allow_insecure = true" in caught.value.reason
    # TLS alone is not enough: anyone could still act as an admin.
    tls = {"listen": listen, "tls_cert_file": "c", "tls_key_file": "k"}
    with pytest.raises(ConfigError, match="no authentication") as caught:
        load_config(env={}, overrides={"server": tls})
    assert "no TLS" not in caught.value.reason
    mutual = {**tls, "tls_client_ca_file": "ca"}
    assert load_config(env={}, overrides={"server": mutual}).server.listen == listen
    insecure = {"listen": listen, "allow_insecure": True}
    assert load_config(env={}, overrides={"server": insecure}).server.allow_insecure


def test_auth_comes_from_the_file_only() -> None:
    with pytest.raises(ConfigError, match=r"AIPROC_AUTH_API_KEYS: \[auth\] is read from"):
        load_config(env={"AIPROC_AUTH_API_KEYS": "x"})


def test_limits_and_keepalive_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\nmax_content_bytes = 4000000\nmax_message_bytes = 8000000\n"
        "[keepalive]\nmax_connection_age = '30m'\n",
    )
    env = {
        "AIPROC_KEEPALIVE_MIN_CLIENT_PING_INTERVAL": "10s",
        "AIPROC_SERVER_MAX_STREAMS_PER_CLIENT": "5",
    }
    config = load_config(path, env=env)
    assert config.server.max_message_bytes == 8_000_000
    assert config.server.max_streams_per_client == 5
    assert config.keepalive.max_connection_age == 1800.0
    assert config.keepalive.min_client_ping_interval == 10.0


def test_grpc_options_follow_the_config() -> None:
    from aiproc.server.api.grpc_options import server_options

    config = load_config(env={})
    options = dict(server_options(config.server, config.keepalive))
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"]
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 30_000
    assert options["grpc.max_connection_idle_ms"] == 1_800_000
    # max_connection_age = 0 means never: gRPC would read a 0 as "at once".
    assert "grpc.max_connection_age_ms" not in options
    assert "grpc.max_connection_age_grace_ms" not in options
