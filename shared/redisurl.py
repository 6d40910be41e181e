"""`REDIS_URL`: one Redis or a Redis Cluster, read in one place and turned into a client.

A single server is any URL redis-py reads (`redis://`, `rediss://`, `unix://`). A cluster is
`redis+cluster://[user:password@]host:port[,host:port...]`, the convention of the `limits`
library: the listed nodes are where a client starts; it learns the rest (and every later
change of masters) from the cluster itself.

Every client is bounded: each attempt waits at most `timeout_seconds` for a connection or an
answer and is tried again at most `retries` times, at once (no back-off sleeps), so a caller
knows within about `(1 + retries) * timeout_seconds` whether Redis counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

CLUSTER_SCHEME: Final = "redis+cluster"
_SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisTarget:
    """What a `REDIS_URL` names."""

    url: str
    cluster: bool
    nodes: tuple[tuple[str, int], ...] = ()
    """A cluster's start-up nodes (host, port)."""
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """The target of `url`; ValueError saying what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"REDIS_URL must start with a scheme such as redis://: {_shown(url)}")
    if scheme in _SINGLE_SCHEMES:
        return RedisTarget(url=url, cluster=False)
    if scheme != CLUSTER_SCHEME:
        raise ValueError(
            f"REDIS_URL scheme {scheme!r} is not one of redis://, rediss://, unix://"
            f" or {CLUSTER_SCHEME}://host:port[,host:port...]"
        )
    credentials, at, hosts = rest.rpartition("@")
    if not at:
        credentials = ""
    if "/" in hosts.rstrip("/") or "?" in hosts:
        raise ValueError(
            f"a {CLUSTER_SCHEME} URL lists host:port pairs only (a cluster has no databases"
            f" and takes no options): {_shown(url)}"
        )
    nodes = tuple(_node(part, url) for part in hosts.rstrip("/").split(","))
    username, _, password = credentials.partition(":")
    return RedisTarget(
        url=url,
        cluster=True,
        nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _node(part: str, url: str) -> tuple[str, int]:
    split = urlsplit(f"//{part}")
    try:
        port = split.port or 6379
    except ValueError:
        port = 0
    if not split.hostname or not 0 < port < 65536:
        raise ValueError(f"{part!r} is not host:port in {_shown(url)}")
    return split.hostname, port


def _shown(url: str) -> str:
    """`url` without its password (errors end up in logs)."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if at else url


def redis_client(url: str, *, timeout_seconds: float, retries: int) -> redis.Redis:
    """A client for the single server `url`, bounded as the module says (a cluster's nodes
    get theirs from :func:`node_client`)."""
    if parse_redis_url(url).cluster:
        raise ValueError("a cluster URL names several servers: use node_client for each")
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), retries),
    )


def node_client(
    target: RedisTarget, host: str, port: int, *, timeout_seconds: float, retries: int
) -> redis.Redis:
    """A client for one node of the cluster `target`, bounded as the module says."""
    return redis.Redis(
        host=host,
        port=port,
        username=target.username,
        password=target.password,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), retries),
    )


def limits_storage(
    url: str | None, *, timeout_seconds: float, retries: int
) -> tuple[str, dict[str, Any]]:
    """The `limits` storage URI and options for `url` (memory when unset): the same client
    library, bounds and cluster support as :func:`redis_client`."""
    if not url:
        return "async+memory://", {}
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "implementation": "redispy",
        "wrap_exceptions": True,
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "retry": Retry(NoBackoff(), retries),
    }
    if target.cluster:
        options["require_full_coverage"] = False
    return f"async+{url}", options
