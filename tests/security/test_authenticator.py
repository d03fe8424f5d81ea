"""Caller resolution and the role table, without a server: metadata and peer properties in."""

from __future__ import annotations

import contextvars

import pytest

from aiproc.server.config import AuthConfig
from aiproc.server.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from aiproc.server.security.authenticator import Authenticator, PeerProperties
from aiproc.server.security.caller import Caller, Role, current_caller
from aiproc.server.security.policy import ADMIN_METHODS, CLIENT_METHODS, authorize
from aiproc.server.security.tokens import TOKEN_PREFIX, hash_token, new_token
from aiproc.v1 import processor_service_pb2 as pb
from tests.security.support import make_key

ALICE = make_key("alice-key", "alice")
OPS = make_key("ops-key", "ops", role="admin")
NO_PEER: PeerProperties = {}


def keyed(*, certificates: bool = False, admins: tuple[str, ...] = ()) -> Authenticator:
    auth = AuthConfig(api_keys=(ALICE.entry, OPS.entry), admin_identities=admins)
    return Authenticator(auth, client_certificates=certificates)


def test_a_token_is_prefixed_random_and_hashed_with_sha256() -> None:
    token = new_token()
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) == len(TOKEN_PREFIX) + 43
    assert new_token() != token
    assert hash_token(token).startswith("sha256:")
    assert len(hash_token(token)) == len("sha256:") + 64
    assert token not in hash_token(token)


def test_open_mode_takes_the_client_id_and_makes_everyone_admin() -> None:
    open_ = Authenticator(AuthConfig(), client_certificates=False)
    assert open_.is_open
    assert open_.caller((), NO_PEER) == Caller("default", Role.ADMIN, "open")
    assert open_.caller((("aiproc-client-id", "bob"),), NO_PEER).tenant == "bob"
    with pytest.raises(InvalidArgument, match="aiproc-client-id"):
        open_.caller((("aiproc-client-id", "a b/c"),), NO_PEER)


def test_a_token_names_its_tenant_and_role() -> None:
    assert keyed().caller(ALICE.metadata, NO_PEER) == Caller("alice", Role.CLIENT, "key alice-key")
    assert keyed().caller(OPS.metadata, NO_PEER) == Caller("ops", Role.ADMIN, "key ops-key")
    lower = (("authorization", f"bearer  {ALICE.token} "),)
    assert keyed().caller(lower, NO_PEER).tenant == "alice"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing credentials: send metadata authorization: Bearer <token>"),
        ((("authorization", "Bearer " + new_token()),), "invalid credentials"),
        ((("authorization", "Basic " + ALICE.token),), "malformed metadata authorization"),
        ((("authorization", "Bearer "),), "malformed metadata authorization"),
        ((("authorization", ALICE.token),), "malformed metadata authorization"),
        (ALICE.metadata + OPS.metadata, "send one metadata authorization entry"),
    ],
)
def test_missing_wrong_or_malformed_credentials_are_unauthenticated(
    metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(Unauthenticated, match=message) as caught:
        keyed().caller(metadata, NO_PEER)
    for token in (ALICE.token, OPS.token, *(value.split()[-1] for _, value in metadata)):
        if token.startswith("aiproc_"):
            assert token[7:15] not in str(caught.value), "a message repeats the credential"


def test_a_client_may_name_only_its_own_tenant_and_an_admin_any() -> None:
    mine = (*ALICE.metadata, ("aiproc-client-id", "alice"))
    assert keyed().caller(mine, NO_PEER).tenant == "alice"
    with pytest.raises(PermissionDenied, match="role client acts only as its own tenant 'alice'"):
        keyed().caller((*ALICE.metadata, ("aiproc-client-id", "bob")), NO_PEER)
    acting = keyed().caller((*OPS.metadata, ("aiproc-client-id", "bob")), NO_PEER)
    assert acting == Caller("bob", Role.ADMIN, "key ops-key")


def peer(common_name: str = "", *alt_names: str) -> PeerProperties:
    return {
        "x509_common_name": [common_name.encode()],
        "x509_subject_alternative_name": [name.encode() for name in alt_names],
    }


def test_a_client_certificate_names_the_tenant_cn_first_else_its_only_san() -> None:
    mtls = keyed(certificates=True, admins=("ops-box",))
    assert not mtls.is_open
    assert mtls.caller((), peer("billing", "billing.internal")) == Caller(
        "billing", Role.CLIENT, "certificate"
    )
    assert mtls.caller((), peer("", "search.internal")).tenant == "search.internal"
    assert mtls.caller((), peer("ops-box")).role is Role.ADMIN
    # A token sent over mutual TLS decides the caller.
    assert mtls.caller(ALICE.metadata, peer("billing")).tenant == "alice"
    with pytest.raises(Unauthenticated, match="exactly one subject alternative name"):
        mtls.caller((), peer("", "a.internal", "b.internal"))
    with pytest.raises(Unauthenticated, match="not a valid tenant name"):
        mtls.caller((), peer("Jane Doe/Finance"))
    with pytest.raises(Unauthenticated, match="no identity"):
        mtls.caller((), NO_PEER)


def test_every_rpc_has_a_role_and_only_admins_watch_events() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["ProcessorService"].methods_by_name)
    assert methods == CLIENT_METHODS | set(ADMIN_METHODS)
    assert not CLIENT_METHODS & set(ADMIN_METHODS)
    client = Caller("alice", Role.CLIENT, "key alice-key")
    admin = Caller("ops", Role.ADMIN, "key ops-key")
    for name in methods:
        authorize(admin, f"/aiproc.v1.ProcessorService/{name}")
    for name in CLIENT_METHODS:
        authorize(client, f"/aiproc.v1.ProcessorService/{name}")
    with pytest.raises(PermissionDenied, match=r"WatchEvents needs role admin.*role is client"):
        authorize(client, "/aiproc.v1.ProcessorService/WatchEvents")
    with pytest.raises(PermissionDenied, match=r"some\.Other/Method needs role admin"):
        authorize(client, "/some.Other/Method")


def test_a_handler_reached_without_the_interceptor_has_no_caller() -> None:
    with pytest.raises(RuntimeError, match="did not pass the auth interceptor"):
        contextvars.Context().run(current_caller)
