"""TLS and mutual TLS on a real server on port 0, with certificates from a throwaway CA."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from aiproc.server.app import AiprocServer
from aiproc.server.config import ConfigError
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.security.support import Pki, config_with, make_key, make_pki
from tests.support import ServerFactory, make_config

OPS = make_key("ops", "ops", role="admin")
Channels = Callable[..., grpc.aio.Channel]


@pytest.fixture
async def secure() -> AsyncIterator[Channels]:
    """Opens TLS channels (with a client certificate if given); closes them at the end."""
    opened: list[grpc.aio.Channel] = []

    def open_(
        server: AiprocServer, ca: bytes, cert: Path | None = None, key: Path | None = None
    ) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )
        opened.append(grpc.aio.secure_channel(server.address, credentials))
        return opened[-1]

    yield open_
    for channel in opened:
        await channel.close()


def queue_request() -> pb.QueueTaskRequest:
    return pb.QueueTaskRequest(task=task_pb2.TaskSpec(url="https://e.com/a", content="Text."))


async def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(
    start_server: ServerFactory, pki: Pki, secure: Channels
) -> None:
    server = await start_server(config_with([OPS], server=pki.tls()))
    stub = pb_grpc.ProcessorServiceStub(secure(server, pki.ca_pem))
    queued = await stub.QueueTask(queue_request(), metadata=OPS.metadata, timeout=5)
    assert queued.state == task_pb2.TASK_STATE_QUEUED
    async with grpc.aio.insecure_channel(server.address) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ProcessorServiceStub(plaintext).Stats(
                pb.StatsRequest(), metadata=OPS.metadata, timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_makes_the_certificate_the_caller(
    start_server: ServerFactory, pki: Pki, secure: Channels
) -> None:
    config = config_with(server=pki.tls(client_ca=True), admin_identities=["ops-box"])
    server = await start_server(config)
    billing = pb_grpc.ProcessorServiceStub(
        secure(server, pki.ca_pem, *pki.client_cert(common_name="billing"))
    )
    search = pb_grpc.ProcessorServiceStub(secure(server, pki.ca_pem, *pki.client_cert("search")))
    ops = pb_grpc.ProcessorServiceStub(
        secure(server, pki.ca_pem, *pki.client_cert(common_name="ops-box"))
    )
    queued = await billing.QueueTask(queue_request(), timeout=5)
    mine = await billing.ListTasks(pb.ListTasksRequest(), timeout=5)
    assert [t.task_id for t in mine.tasks] == [queued.task_id]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search.GetTask(pb.GetTaskRequest(task_id=queued.task_id), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # A certificate's Stats are its own tenant's: search has queued nothing.
    assert (await search.Stats(pb.StatsRequest(), timeout=5)).counters.queued == 0
    events = search.WatchEvents(pb.WatchEventsRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The admin certificate acts for the tenant a certificate named.
    stats = await ops.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.queued == 1
    found = await ops.GetTask(
        pb.GetTaskRequest(task_id=queued.task_id),
        metadata=(("aiproc-client-id", "billing"),),
        timeout=5,
    )
    assert found.task.task_id == queued.task_id


async def test_mutual_tls_refuses_a_client_without_a_certificate_or_from_another_ca(
    start_server: ServerFactory, pki: Pki, secure: Channels, tmp_path: Path
) -> None:
    server = await start_server(config_with(server=pki.tls(client_ca=True)))
    (tmp_path / "other").mkdir()
    stranger = make_pki(tmp_path / "other")  # its client certificates are not ours
    for channel in (
        secure(server, pki.ca_pem),
        secure(server, pki.ca_pem, *stranger.client_cert(common_name="billing")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ProcessorServiceStub(channel).ListTasks(pb.ListTasksRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_allow_insecure_serves_beyond_loopback_with_a_warning(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aiproc.server.app")
    config = make_config(server={"listen": "0.0.0.0:0", "allow_insecure": True})
    server = await start_server(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("allow_insecure" in w and "no TLS" in w for w in warnings)
    assert any("no authentication" in w for w in warnings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await pb_grpc.ProcessorServiceStub(channel).ListTasks(pb.ListTasksRequest(), timeout=5)


@pytest.mark.parametrize(
    ("breakage", "field", "reason"),
    [
        ("missing cert", "server.tls_cert_file", "cannot read"),
        ("garbage cert", "server.tls_cert_file", "holds no PEM certificate"),
        ("garbage key", "server.tls_key_file", "is not a PEM private key"),
        ("someone else's key", "server.tls_key_file", "does not belong to the certificate"),
        ("encrypted key", "server.tls_key_file", "the private key is encrypted"),
        ("garbage client ca", "server.tls_client_ca_file", "holds no PEM certificate"),
    ],
)
async def test_bad_certificate_files_stop_the_start_naming_the_field(
    pki: Pki, tmp_path: Path, breakage: str, field: str, reason: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    settings = pki.tls(client_ca=True)
    if breakage == "missing cert":
        settings["tls_cert_file"] = str(tmp_path / "absent.crt")
    elif breakage == "garbage cert":
        settings["tls_cert_file"] = str(garbage)
    elif breakage == "garbage key":
        settings["tls_key_file"] = str(garbage)
    elif breakage == "someone else's key":
        settings["tls_key_file"] = str(pki.client_cert(common_name="x")[1])
    elif breakage == "encrypted key":
        key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
        encrypted = tmp_path / "encrypted.key"
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
        settings["tls_key_file"] = str(encrypted)
    else:
        settings["tls_client_ca_file"] = str(garbage)
    with pytest.raises(ConfigError) as caught:
        await AiprocServer.start(config_with(server=settings))
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_aiproc_serve_reports_a_bad_key_file_in_one_line(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "aiproc.toml"
    config.write_text(
        f"[server]\nstore = 'memory'\ntls_cert_file = '{pki.cert_file}'\n"
        f"tls_key_file = '{pki.cert_file}'\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "aiproc.server.cli.main", "serve", "--listen", "127.0.0.1:0",
         "--config", str(config), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("aiproc: error: invalid config: server.tls_key_file:")
    assert "Traceback" not in done.stderr
