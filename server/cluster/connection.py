"""Opening the Redis connection every cluster component shares.

Checked once at start-up, so a wrong URL or a Redis that is down stops the
server with one clear line instead of failing on its first task. The message
names where it tried to connect but never the password: it ends up in logs.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from aiproc.server.core.errors import StoreError

# Without a bound, a Redis behind a firewall that drops packets would hang start-up for
# minutes. A URL can still choose its own (?socket_connect_timeout=...): its options win.
CONNECT_TIMEOUT = 5.0


async def open_redis(url: str) -> redis_asyncio.Redis:
    """A client for `url` (redis://, rediss:// or unix://) that answered a PING.

    Replies are decoded to str. Raises StoreError if the URL is malformed or Redis
    cannot be reached or refuses the credentials; the caller closes the client
    (`await client.aclose()`) otherwise.
    """
    try:
        client = redis_asyncio.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            # With a socket_timeout redis-py wraps each send in asyncio.wait_for, which on
            # Python 3.11 can swallow a cancel arriving as the send completes (CPython
            # gh-86296): a stopping loop would then never stop. Keepalive finds dead peers.
            socket_timeout=None,
            socket_keepalive=True,
        )
    except ValueError as exc:
        raise StoreError(f"invalid Redis URL: {_without_secrets(str(exc), url)}") from None
    where = _address(client)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        reason = _without_secrets(str(exc) or type(exc).__name__, url)
        # `from None`: a chained exception would print the driver's own message too, and
        # nothing here vouches for what that contains.
        raise StoreError(f"cannot reach Redis at {where}: {reason}") from None
    return client


def _address(client: redis_asyncio.Redis) -> str:
    """host:port, or the socket path of a unix:// URL."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _without_secrets(text: str, url: str) -> str:
    """`text` with the URL, and its password as written and decoded, masked."""
    secrets = [url]
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        secrets += [password, unquote(password)]
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
