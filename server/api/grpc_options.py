"""The gRPC server's transport limits and keepalive policy, as gRPC channel options.

Everything here is enforced by gRPC itself, before a request reaches the
servicer: an oversized message or metadata is refused with RESOURCE_EXHAUSTED,
calls beyond a connection's stream limit wait on the client, and a client that
pings too often is sent GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings").
"""

from __future__ import annotations

from aiproc.server.config import KeepaliveConfig, ServerConfig

__all__ = ["server_options"]


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(server: ServerConfig, keepalive: KeepaliveConfig) -> list[tuple[str, int]]:
    """The options for `grpc.aio.server(options=...)` that `server` and `keepalive` describe."""
    options = [
        ("grpc.max_receive_message_length", server.max_message_bytes),
        # The same soft and hard limit: between the two gRPC refuses a random share of calls.
        ("grpc.max_metadata_size", server.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", server.max_metadata_bytes),
        ("grpc.max_concurrent_streams", server.max_streams_per_connection),
        # By default gRPC counts a stream against that limit until the server has freed it,
        # a moment after its last frame, while the client counts it until that frame: a
        # client at the limit that starts a call as soon as one ends has it refused
        # (UNAVAILABLE, RST_STREAM REFUSED_STREAM), a call never run but not retried. Counted
        # as HTTP/2 counts, calls beyond the limit wait on the client, as documented.
        ("grpc.http.overload_protection", 0),
        ("grpc.keepalive_time_ms", _millis(keepalive.ping_interval)),
        ("grpc.keepalive_timeout_ms", _millis(keepalive.ping_timeout)),
        ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls)),
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS is spelled this way.
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            _millis(keepalive.min_client_ping_interval),
        ),
        ("grpc.http2.max_ping_strikes", keepalive.max_ping_strikes),
    ]
    # 0 means never; gRPC would read 0 ms as "at once", so the option is left out.
    if keepalive.max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", _millis(keepalive.max_connection_idle)))
    if keepalive.max_connection_age > 0:
        options.append(("grpc.max_connection_age_ms", _millis(keepalive.max_connection_age)))
        options.append(
            ("grpc.max_connection_age_grace_ms", _millis(keepalive.max_connection_age_grace))
        )
    return options
