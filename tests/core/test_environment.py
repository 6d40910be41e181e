"""US-003: the environment policy returns the spec's table and refuses anything else."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shared.environment import Environment, EnvironmentConfig, get_environment_config
from shared.errors import InvalidEnvironment

# The table from the specification, written out independently of the implementation.
SPEC = {
    "prod": {
        "rate_limit_multiplier": 1,
        "auto_suspend_enabled": True,
        "log_level": "info",
        "max_webhook_retries": 3,
    },
    "dev": {
        "rate_limit_multiplier": 10,
        "auto_suspend_enabled": False,
        "log_level": "debug",
        "max_webhook_retries": None,
    },
    "staging": {
        "rate_limit_multiplier": 5,
        "auto_suspend_enabled": False,
        "log_level": "debug",
        "max_webhook_retries": 5,
    },
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_config_matches_the_spec_for_strings_and_enums(name: str) -> None:
    for value in (name, Environment(name)):
        config = get_environment_config(value)
        assert config.environment == Environment(name)
        assert {field: getattr(config, field) for field in SPEC[name]} == SPEC[name]


def test_every_environment_has_a_config() -> None:
    assert {env.value for env in Environment} == set(SPEC)


def test_config_is_immutable() -> None:
    config = get_environment_config("prod")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rate_limit_multiplier = 100  # type: ignore[misc]


def test_attempts_and_bodies_follow_from_the_table() -> None:
    assert get_environment_config("prod").max_webhook_attempts == 4
    assert get_environment_config("staging").max_webhook_attempts == 6
    assert get_environment_config("dev").max_webhook_attempts is None
    assert get_environment_config("dev").logs_bodies
    assert get_environment_config("staging").logs_bodies
    assert not get_environment_config("prod").logs_bodies


@pytest.mark.parametrize("bad", ["production", "", "PROD", " prod", "live", None, 1, b"prod"])
def test_unknown_values_fail_clearly(bad: Any) -> None:
    with pytest.raises(InvalidEnvironment) as info:
        get_environment_config(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "'prod', 'dev', 'staging'" in message
    assert isinstance(info.value, ValueError)


def test_key_labels_and_display_names() -> None:
    assert [env.key_label for env in Environment] == ["live", "dev", "staging"]
    assert [env.display_name for env in Environment] == ["Production", "Development", "Staging"]


def test_config_type_is_exported() -> None:
    assert isinstance(get_environment_config("dev"), EnvironmentConfig)
