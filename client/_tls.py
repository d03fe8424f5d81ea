"""Channel credentials from the client's TLS settings: PEM given as file paths or bytes."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

Pem = str | os.PathLike[str] | bytes
"""PEM data as bytes, or the path of a file holding it."""


def channel_credentials(
    *, tls: bool, ca: Pem | None, cert: Pem | None, key: Pem | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS setting is given, else None (plaintext).

    Without `ca` the server's certificate is checked against the system's roots; `cert`
    and `key` (together) present a client certificate, for mutual TLS. Files are read
    now, so a wrong path fails here rather than on the first call.
    """
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together: give both for a client certificate")
    if not tls and ca is None and cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )


def _pem(source: Pem | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()
