"""`REDIS_URL` as every process reads it: one server, or a cluster in the `limits` convention;
a wrong URL stops the process at start with a message naming the problem (and no password)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.redisurl import limits_storage, parse_redis_url
from shared.settings import PlatformSettings


def test_a_cluster_url_names_its_start_up_nodes_and_credentials() -> None:
    target = parse_redis_url("redis+cluster://app:s%40cret@10.0.0.1:7000,redis-b:7001,redis-c")
    assert target.cluster
    assert target.nodes == (("10.0.0.1", 7000), ("redis-b", 7001), ("redis-c", 6379))
    assert (target.username, target.password) == ("app", "s@cret")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@host:6380", "unix:///run/redis.sock"]
)
def test_single_server_urls_pass_through(url: str) -> None:
    target = parse_redis_url(url)
    assert not target.cluster and target.url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:6379", "must start with a scheme"),
        ("memcached://127.0.0.1", "is not one of"),
        ("redis+cluster://h1:7000,h2:7001/0", "host:port pairs only"),
        ("redis+cluster://h1:7000,:7001", "is not host:port"),
        ("redis+cluster://h1:notaport", "is not host:port"),
        ("redis+cluster://user:hunter2@h1:99999", "is not host:port"),
    ],
)
def test_a_wrong_url_is_refused_at_start_with_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PlatformSettings(_env_file=None, redis_url=url)
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_the_console_throttle_gets_the_same_target_and_bounds() -> None:
    uri, options = limits_storage("redis+cluster://h1:7000,h2:7001", timeout_seconds=0.5, retries=1)
    assert uri == "async+redis+cluster://h1:7000,h2:7001"
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.5
    assert options["retry"].get_retries() == 1
    assert limits_storage(None, timeout_seconds=0.5, retries=1) == ("async+memory://", {})
