"""Auth test helpers: configs with API keys, certificates from a throwaway CA, channels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import trustme

from aiproc.server.config import ApiKeyConfig, AuthConfig, Config, validate
from aiproc.server.security.tokens import hash_token, new_token
from tests.support import make_config


@dataclass(frozen=True)
class Key:
    """A token the test holds and the entry the server's config has for it."""

    token: str
    entry: ApiKeyConfig

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


def make_key(name: str, tenant: str, role: str = "client") -> Key:
    token = new_token()
    return Key(token, ApiKeyConfig(name=name, tenant=tenant, role=role, hash=hash_token(token)))


def config_with(
    keys: Sequence[Key] = (),
    *,
    admin_identities: Sequence[str] = (),
    **sections: dict[str, object],
) -> Config:
    """A test config (port 0, memory store) with these keys, validated like a loaded one."""
    config = replace(
        make_config(**sections),
        auth=AuthConfig(
            api_keys=tuple(k.entry for k in keys), admin_identities=tuple(admin_identities)
        ),
    )
    validate(config)
    return config


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and their files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    directory: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def tls(self, client_ca: bool = False) -> dict[str, object]:
        """[server] settings for TLS, and for mutual TLS with `client_ca`."""
        settings: dict[str, object] = {
            "tls_cert_file": str(self.cert_file),
            "tls_key_file": str(self.key_file),
        }
        if client_ca:
            settings["tls_client_ca_file"] = str(self.ca_file)
        return settings

    def client_cert(self, *alt_names: str, common_name: str | None = None) -> tuple[Path, Path]:
        """A client certificate (and key) file signed by the CA."""
        issued = self.ca.issue_cert(*alt_names, common_name=common_name)
        stem = common_name or "-".join(alt_names) or "anonymous"
        cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(
        ca,
        directory / "ca.pem",
        directory / "server.crt",
        directory / "server.key",
        directory,
    )
    ca.cert_pem.write_to_path(str(pki.ca_file))
    server.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    server.private_key_pem.write_to_path(str(pki.key_file))
    return pki
