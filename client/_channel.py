"""The channel options of every aiproc client, agreed with the server's keepalive policy.

By default a server (its `[keepalive]` section) tolerates a client's ping at
most every 30 seconds while no data flows, and closes the connection of a
client that pings faster (GOAWAY "too_many_pings") after two such strikes.
This client pings every 60 seconds, and only while a call is open, which any
server policy with `min_client_ping_interval` up to 60 seconds accepts.
"""

from __future__ import annotations

__all__ = ["KEEPALIVE_TIMEOUT_MS", "KEEPALIVE_TIME_MS", "channel_options"]

KEEPALIVE_TIME_MS = 60_000
"""How often the client pings an open connection: twice the server's shortest tolerated
interval, so timer jitter never makes a ping a strike, and under the idle timeouts of
NATs and load balancers (AWS NLB: 350 s) that would otherwise cut a quiet result stream."""
KEEPALIVE_TIMEOUT_MS = 20_000
"""How long a ping may go unanswered before the connection counts as dead (gRPC's default)."""


def channel_options(
    *, keepalive_time_ms: int = KEEPALIVE_TIME_MS, keepalive_timeout_ms: int = KEEPALIVE_TIMEOUT_MS
) -> list[tuple[str, int]]:
    """Options for `grpc.aio.insecure_channel(options=...)`; the defaults suit a default server."""
    return [
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        # Only while a call is open: an idle channel reconnects when it is next used, and a
        # server with permit_without_calls = false counts pings on an idle connection as strikes.
        ("grpc.keepalive_permit_without_calls", 0),
        # Without this gRPC stops pinging after two pings with no data in between, so a quiet
        # StreamResults or WatchEvents call would no longer notice a dead connection.
        ("grpc.http2.max_pings_without_data", 0),
    ]
