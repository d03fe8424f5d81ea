"""Who may call, and over what: API keys, caller identity, roles, TLS.

tokens         make an API token; the sha256 hash the config keeps instead
caller         Caller(tenant, role), set once per RPC, read by the servicer
authenticator  metadata + TLS peer -> Caller, as [auth] and [server] configure
policy         which role each RPC needs (deny by default)
interceptor    the grpc.aio interceptor every RPC but health/reflection goes through
tls            server credentials from the configured PEM files
"""

from aiproc.server.security.authenticator import Authenticator
from aiproc.server.security.caller import Caller, Role, current_caller
from aiproc.server.security.tls import server_credentials
from aiproc.server.security.tokens import hash_token, new_token

__all__ = [
    "Authenticator",
    "Caller",
    "Role",
    "current_caller",
    "hash_token",
    "new_token",
    "server_credentials",
]
