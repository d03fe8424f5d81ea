"""TLS on the gRPC port: server credentials from the configured PEM files, checked at start.

Every file is read and parsed before the server binds, so a missing, unreadable or
wrong file stops the start with one line naming the field (a ConfigError), never a
handshake failure later or a traceback.
"""

from __future__ import annotations

import ssl

import grpc

from aiproc.server.config import ConfigError, ServerConfig


class _EncryptedKey(Exception):
    """Raised by the password callback: an encrypted key would need a prompt."""


def _no_password() -> bytes:
    raise _EncryptedKey


def server_credentials(server: ServerConfig) -> grpc.ServerCredentials | None:
    """The credentials of a TLS (or mutual TLS) port, or None for plaintext.

    With tls_client_ca_file, clients must present a certificate signed by that CA.
    """
    if not server.tls_cert_file:
        return None
    cert = _read("server.tls_cert_file", server.tls_cert_file)
    key = _read("server.tls_key_file", server.tls_key_file)
    _check_certificates("server.tls_cert_file", server.tls_cert_file, cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            "server.tls_key_file", "the private key is encrypted; give an unencrypted PEM key"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        reason = (
            "does not belong to the certificate in tls_cert_file"
            if "KEY_VALUES_MISMATCH" in str(exc)
            else "is not a PEM private key"
        )
        raise ConfigError("server.tls_key_file", f"{server.tls_key_file} {reason}") from None
    client_ca = None
    if server.tls_client_ca_file:
        client_ca = _read("server.tls_client_ca_file", server.tls_client_ca_file)
        _check_certificates("server.tls_client_ca_file", server.tls_client_ca_file, client_ca)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def _check_certificates(field: str, path: str, pem: bytes) -> None:
    """Raises ConfigError unless `pem` holds one or more PEM certificates."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError):  # ValueError: not ASCII, or empty
        raise ConfigError(field, f"{path} holds no PEM certificate") from None
