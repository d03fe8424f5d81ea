"""Resolves the caller of one RPC from its metadata and its TLS peer, as the config says.

Modes:

- **open** (no [[auth.api_keys]] and no server.tls_client_ca_file): every caller is an
  admin acting as the tenant its `aiproc-client-id` metadata names ("default" when
  absent). For development on loopback; the config refuses it elsewhere unless
  server.allow_insecure.
- **authenticated**: a bearer token in metadata `authorization: Bearer <token>` names an
  API key, hence a tenant and a role; without one, the verified client certificate (mutual
  TLS) names the tenant, and server-side config says which certificates are admins. A token,
  when sent, wins over the certificate: the TLS layer already admitted the peer, and the
  token is the more specific claim. `aiproc-client-id` may only repeat the caller's own
  tenant, except for admins, who act for the tenant it names.

Messages say what is missing and never repeat what the caller sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from aiproc.server.config import KEY_HASH_PREFIX, TENANT_RE, TENANT_RULE, AuthConfig
from aiproc.server.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from aiproc.server.security.caller import Caller, Role
from aiproc.server.security.tokens import token_digest

AUTHORIZATION = "authorization"
CLIENT_ID_HEADER = "aiproc-client-id"
DEFAULT_TENANT = "default"
BEARER = "bearer"

Metadata = Iterable[tuple[str, str | bytes]]
PeerProperties = Mapping[str, Iterable[bytes]]
"""A call's auth context (`ServicerContext.auth_context()`): TLS peer properties."""

_COMMON_NAME = "x509_common_name"
_ALT_NAMES = "x509_subject_alternative_name"


class Authenticator:
    """Turns a call's metadata and TLS peer into a `Caller`, or raises why it cannot."""

    def __init__(self, auth: AuthConfig, *, client_certificates: bool) -> None:
        # Looked up by digest: a dict probe on SHA-256 outputs leaks nothing useful about
        # any configured token, so no constant-time comparison is needed on this path.
        self._keys = {
            bytes.fromhex(key.hash.removeprefix(KEY_HASH_PREFIX)): key for key in auth.api_keys
        }
        self._admins = frozenset(auth.admin_identities)
        self._certificates = client_certificates

    @property
    def is_open(self) -> bool:
        """Whether no credential is asked for (no API keys, no client certificates)."""
        return not self._keys and not self._certificates

    def __repr__(self) -> str:
        if self.is_open:
            return "<Authenticator open>"
        certificates = "client certificates" if self._certificates else "no client certificates"
        return f"<Authenticator {len(self._keys)} keys, {certificates}>"

    def caller(self, metadata: Metadata, peer: PeerProperties) -> Caller:
        """The caller of a call with this metadata from this peer."""
        headers: dict[str, list[str]] = {}
        for key, value in metadata:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            headers.setdefault(key, []).append(text)
        if self.is_open:
            return Caller(_client_id(headers) or DEFAULT_TENANT, Role.ADMIN, "open")
        caller = self._identify(headers, peer)
        acting_for = _client_id(headers)
        if acting_for is None or acting_for == caller.tenant:
            return caller
        if caller.role is Role.ADMIN:
            return replace(caller, tenant=acting_for)
        raise PermissionDenied(
            f"metadata {CLIENT_ID_HEADER}: role client acts only as its own tenant"
            f" {caller.tenant!r}; only an admin may name another"
        )

    def _identify(self, headers: Mapping[str, list[str]], peer: PeerProperties) -> Caller:
        values = headers.get(AUTHORIZATION, [])
        if len(values) > 1:
            raise Unauthenticated(f"send one metadata {AUTHORIZATION} entry, not {len(values)}")
        if values:
            return self._by_token(values[0])
        if self._certificates:
            return self._by_certificate(peer)
        raise Unauthenticated(f"missing credentials: send metadata {AUTHORIZATION}: Bearer <token>")

    def _by_token(self, value: str) -> Caller:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != BEARER or not token.strip():
            raise Unauthenticated(f"malformed metadata {AUTHORIZATION}: expected Bearer <token>")
        key = self._keys.get(token_digest(token.strip()))
        if key is None:
            raise Unauthenticated(
                "invalid credentials: the bearer token is not a key of this server"
            )
        return Caller(key.tenant, Role(key.role), f"key {key.name}")

    def _by_certificate(self, peer: PeerProperties) -> Caller:
        """The tenant a verified client certificate names: its subject Common Name, or,
        without one, its only subject alternative name.

        The CN comes first because it is one value by construction, and it is what
        client-certificate tooling (Kubernetes, PostgreSQL, NATS) treats as the user; SANs
        are lists of names, and picking one of several would be arbitrary.
        """
        common_name = [v for v in peer.get(_COMMON_NAME, ()) if v]
        alt_names = [v for v in peer.get(_ALT_NAMES, ()) if v]
        if common_name:
            raw = common_name[0]
        elif len(alt_names) == 1:
            raw = alt_names[0]
        else:
            raise Unauthenticated(
                "client certificate has no identity: it needs a subject Common Name, or"
                " exactly one subject alternative name"
            )
        identity = raw.decode("utf-8", "replace")
        if not TENANT_RE.match(identity):
            raise Unauthenticated(
                f"client certificate identity is not a valid tenant name ({TENANT_RULE})"
            )
        role = Role.ADMIN if identity in self._admins else Role.CLIENT
        return Caller(identity, role, "certificate")


def _client_id(headers: Mapping[str, list[str]]) -> str | None:
    """The tenant named in `aiproc-client-id`, if any."""
    values = headers.get(CLIENT_ID_HEADER)
    if not values:
        return None
    if not TENANT_RE.match(values[0]):
        raise InvalidArgument(f"metadata {CLIENT_ID_HEADER}", TENANT_RULE)
    return values[0]
