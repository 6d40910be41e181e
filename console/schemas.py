"""The JSON API's request and response bodies (they are also its OpenAPI schema). Rows the shared
modules return as frozen dataclasses are served as they are; models here add or leave out fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.deliveries import Attempt, Delivery
from shared.environment import Environment, get_environment_config
from shared.suspensions import Suspension
from shared.webhooks import WebhookEndpoint


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL: refuse it here with a clear message rather than fail later.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Length first (str's own, clearer messages), then the NUL check.
Name = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_no_nul)]
KeyName = Annotated[str, StringConstraints(max_length=100), AfterValidator(_no_nul)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_no_nul)]
Description = Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_nul)]
EventType = Annotated[str, StringConstraints(max_length=100), AfterValidator(_no_nul)]
Email = Annotated[str, StringConstraints(min_length=3, max_length=254), AfterValidator(_no_nul)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_nul)]
Message = Annotated[str, StringConstraints(max_length=500), AfterValidator(_no_nul)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


# Requests ----------------------------------------------------------------------------------------


class Credentials(Input):
    email: Email = Field(examples=["ada@example.com"])
    password: Password


class ProjectCreate(Input):
    name: Name = Field(examples=["shop"])
    environment: Environment = Field(
        default=Environment.PROD, description="prod (the default), dev or staging."
    )


class ProjectUpdate(Input):
    name: Name | None = None
    environment: Environment | None = Field(
        default=None, description="Refused (409) while the project has active keys."
    )


class KeyCreate(Input):
    kind: Literal["pk", "sk"] = Field(
        default="sk", description="pk: publishable (read-only); sk: secret."
    )
    name: KeyName = ""
    expires_at: datetime | None = None


class KeyRotate(Input):
    grace_seconds: int = Field(
        default=86_400,
        ge=0,
        le=30 * 86_400,
        description="How long the old key keeps working; 0 revokes it at once.",
    )


class EndpointCreate(Input):
    url: Url = Field(examples=["https://example.com/hook"])
    description: Description = ""
    event_types: list[EventType] = Field(
        default_factory=list, max_length=50, description="Empty: every event type."
    )


class TestEvent(Input):
    message: Message = "Hello from Environment Parity"


# Responses ---------------------------------------------------------------------------------------


class EnvironmentOut(Output):
    environment: Environment
    display_name: str
    rate_limit_multiplier: int
    auto_suspend_enabled: bool
    log_level: str
    max_webhook_retries: int | None = Field(description="null: retries without limit.")

    @classmethod
    def of(cls, environment: Environment) -> EnvironmentOut:
        config = get_environment_config(environment)
        return cls(
            environment=environment,
            display_name=environment.display_name,
            rate_limit_multiplier=config.rate_limit_multiplier,
            auto_suspend_enabled=config.auto_suspend_enabled,
            log_level=config.log_level,
            max_webhook_retries=config.max_webhook_retries,
        )


class KeyOut(Output):
    id: UUID
    project_id: UUID
    name: str
    kind: Literal["pk", "sk"]
    environment: Environment
    prefix: str
    last_four: str
    display: str
    status: Literal["active", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class IssuedKeyOut(Output):
    key: KeyOut
    token: str = Field(description="The whole key. Shown this once; store it now.")


class CreatedEndpointOut(Output):
    endpoint: WebhookEndpoint
    secret: str = Field(description="Standard Webhooks signing secret. Shown this once.")


class TestEventOut(Output):
    event_id: UUID
    deliveries: int = Field(description="Deliveries created: one per enabled, subscribed endpoint.")


class SuspensionStateOut(Output):
    suspended: bool
    current: Suspension | None
    history: list[Suspension]


class DeliveryDetailOut(Output):
    delivery: Delivery
    attempts: list[Attempt] = Field(description="Every HTTP attempt, first first.")


class TokenOut(Output):
    access_token: str = Field(description="Send as `Authorization: Bearer <token>`.")
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth token type)


class MeOut(Output):
    user_id: UUID
    email: str | None


class FieldError(Output):
    field: str
    message: str


class ErrorBody(Output):
    code: str
    message: str
    hint: str | None = None
    fields: list[FieldError] | None = None


class ErrorOut(Output):
    error: ErrorBody
