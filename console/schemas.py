"""The JSON API's request and response bodies (they are also its OpenAPI schema). Rows the shared
modules return as frozen dataclasses are served as they are; models here add or leave out fields."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from shared import audit, users, webhooks
from shared.deliveries import Attempt, Delivery
from shared.environment import Environment, get_environment_config
from shared.errors import InvalidInput
from shared.suspensions import Suspension
from shared.users import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from shared.webhook_urls import (
    MAX_URL_LENGTH,
    URL_DESCRIPTION,
    URL_PATTERN,
    display_form,
    parse_webhook_url,
)
from shared.webhooks import WebhookEndpoint


def _as_utc(value: datetime | None) -> datetime | None:
    # A time without an offset is taken as UTC (documented), never compared naive with aware.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# Each constraint is a JSON Schema keyword, so the OpenAPI schema says exactly what is accepted.
# Postgres text cannot hold NUL: every string refuses it.
_TEXT: Final = r"^[^\x00]*$"
# Names are stripped (Python's whitespace) before use: at least one visible character.
_NAME: Final = rf"^[^\x00]*[^{users.SPACE_OR_CONTROL}][^\x00]*$"
_NO_SPACE: Final = rf"[^{users.SPACE_OR_CONTROL}]"
EMAIL_PATTERN: Final = f"^{users.EMAIL_PATTERN.pattern}$"
EVENT_TYPE_PATTERN: Final = r"^[a-z_]+(\.[a-z_]+)+$"
ENDPOINT_NAME_PATTERN: Final = f"^{webhooks.NAME_PATTERN.pattern}$"


@dataclass(frozen=True)
class Matching:
    """A regular expression the value must match: stated in the schema as `pattern` and checked
    here with a message a person can act on (not the expression itself)."""

    pattern: str
    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        regex = re.compile(self.pattern)
        message = self.message

        def check(value: str) -> str:
            if regex.search(value) is None:
                raise ValueError(message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        result = handler(schema)
        result["pattern"] = self.pattern
        return result


NO_NUL = Matching(_TEXT, "must not contain NUL characters")


def _length(min_length: int | None, max_length: int) -> StringConstraints:
    return StringConstraints(min_length=min_length, max_length=max_length)


Name = Annotated[
    str,
    _length(1, 100),
    Matching(_NAME, "must have a visible character (and no NUL characters)"),
]
KeyName = Annotated[str, _length(None, 100), NO_NUL]


def _webhook_url(value: str) -> str:
    # The one check of shared/webhook_urls.py, with its message; the schema states its grammar.
    try:
        return parse_webhook_url(value).url
    except InvalidInput as exc:
        raise ValueError(exc.message) from None


# What a person may type: an IRI (a host name may be international); what is stored and returned
# is its ASCII form, a URI.
Url = Annotated[
    str,
    _length(1, MAX_URL_LENGTH),
    AfterValidator(_webhook_url),
    WithJsonSchema(
        {
            "type": "string",
            "format": "iri",
            "minLength": 1,
            "maxLength": MAX_URL_LENGTH,
            "pattern": URL_PATTERN,
            "description": URL_DESCRIPTION,
        }
    ),
]
StoredUrl = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "format": "uri",
            "maxLength": MAX_URL_LENGTH,
            "description": "The URL as stored and requested: host names in their ASCII (IDNA)"
            " form, other non-ASCII characters percent-encoded.",
        }
    ),
]
Description = Annotated[str, _length(None, 200), NO_NUL]
EventType = Annotated[
    str,
    _length(None, 100),
    Matching(EVENT_TYPE_PATTERN, "expected dotted lower-case words, e.g. project.suspended"),
]
EndpointName = Annotated[
    str,
    _length(1, 63),
    Matching(
        ENDPOINT_NAME_PATTERN,
        "expected lower-case letters, digits and dashes (not first or last), e.g. orders",
    ),
]
Email = Annotated[
    str,
    _length(3, 254),
    Matching(EMAIL_PATTERN, "enter a valid email address, e.g. ada@example.com"),
]
Password = Annotated[str, _length(MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH), NO_NUL]
Message = Annotated[str, _length(None, 500), NO_NUL]


# RFC 3339's date-time, the offset optional (then UTC). Pydantic alone would also take a bare
# date or a Unix time, which the schema's `date-time` does not allow.
_DATE_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?"
)


def _time_text(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _DATE_TIME.fullmatch(value) is None:
        raise ValueError("must be a date-time such as 2030-01-01T00:00:00Z (no offset: UTC)")
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(_time_text), AfterValidator(_as_utc)]


def _not_bool(value: object) -> object:
    # JSON Schema's integer takes 400.0 (as pydantic does) but never true.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


Integer = Annotated[int, BeforeValidator(_not_bool)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


# Requests ----------------------------------------------------------------------------------------


class Credentials(Input):
    email: Email = Field(examples=["ada@example.com"])
    password: Password = Field(
        description=f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters."
    )


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
    expires_at: UtcDatetime | None = Field(
        default=None,
        description="When the key stops working; in the future. A time without an offset is "
        "taken as UTC; null: never.",
    )


class KeyRotate(Input):
    grace_seconds: Integer = Field(
        default=86_400,
        ge=0,
        le=30 * 86_400,
        description="How long the old key keeps working; 0 revokes it at once.",
    )


class EndpointCreate(Input):
    name: EndpointName | None = Field(
        default=None,
        examples=["orders"],
        description="Unique within the project: the same endpoint in another environment has "
        "the same name. Default: from the URL's host and path.",
    )
    url: Url = Field(examples=["https://hooks.example.com:10443/in"])
    description: Description = ""
    event_types: list[EventType] = Field(
        default_factory=list, max_length=50, description="Empty: every event type."
    )


class AppCreate(Input):
    name: Name = Field(examples=["shop"])
    create_projects: bool = Field(
        default=False,
        description="Also create one project per environment (<name>-dev, <name>-staging, "
        "<name>-prod), linked into the app.",
    )


class AppLink(Input):
    project_id: UUID = Field(description="A project of yours whose environment is this slot's.")


class PromotionCreate(Input):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Environment = Field(alias="from", description="dev or staging.")
    target: Environment = Field(alias="to", description="staging or prod, after `from`.")
    dry_run: bool = Field(default=True, description="true: return the plan, change nothing.")
    fingerprint: str | None = Field(
        default=None,
        max_length=64,
        description="The dry run's fingerprint; required to apply (409 if either side changed).",
    )
    include_limits: bool = Field(
        default=False, description="Also copy the base rate limit and hard cap."
    )
    urls: dict[EndpointName, Url] = Field(
        default_factory=dict,
        max_length=500,
        description="The target's URL for each endpoint the promotion creates, by name.",
    )
    carry_urls: bool = Field(
        default=False, description="Create endpoints with the source's URL where urls has none."
    )
    confirm_name: Annotated[str, _length(None, 100), NO_NUL] | None = Field(
        default=None, description="The target project's name; required into prod (422 without)."
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


class EndpointOut(Output):
    id: UUID
    project_id: UUID
    name: str | None = Field(
        description="Unique within the project; null only for an endpoint older than names that"
        " was not written since."
    )
    url: StoredUrl
    display_url: str = Field(
        description="The URL as a person reads it: an international host name in Unicode."
    )
    description: str
    event_types: list[str] = Field(description="Event types delivered here; empty: every type.")
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointOut:
        return cls(
            id=endpoint.id,
            project_id=endpoint.project_id,
            name=endpoint.name,
            url=endpoint.url,
            display_url=display_form(endpoint.url),
            description=endpoint.description,
            event_types=list(endpoint.event_types),
            enabled=endpoint.enabled,
            disabled_reason=endpoint.disabled_reason,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )


class CreatedEndpointOut(Output):
    endpoint: EndpointOut
    secret: str = Field(description="Standard Webhooks signing secret. Shown this once.")


class AppOut(Output):
    id: UUID
    name: str
    created_at: datetime
    environments: dict[Environment, UUID | None] = Field(
        description="The project linked as each environment, or null."
    )


class DifferenceOut(Output):
    model_config = ConfigDict(from_attributes=True, frozen=True, populate_by_name=True)

    klass: Literal["policy", "environment-specific", "drift"] = Field(alias="class")
    field: str = Field(examples=["endpoints.orders.event_types"])
    source: Any = Field(alias="from")
    target: Any = Field(alias="to")
    promotable: bool = Field(
        description="A promotion from `from` makes it vanish (limits: with include_limits)."
    )


class ParityOut(Output):
    model_config = ConfigDict(from_attributes=True, frozen=True, populate_by_name=True)

    source: Environment = Field(alias="from")
    target: Environment = Field(alias="to")
    differences: list[DifferenceOut]


class PromotionOut(Output):
    model_config = ConfigDict(from_attributes=True, frozen=True, populate_by_name=True)

    source: Environment = Field(alias="from")
    target: Environment = Field(alias="to")
    plan: list[dict[str, Any]] = Field(description="The changes, in the order they apply.")
    fingerprint: str
    applied: bool
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Signing secrets of the endpoints created, by name. Shown this once.",
    )


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


AuditAction = StrEnum("AuditAction", {action: action for action in audit.ACTIONS})  # type: ignore[misc]
"""The actions the audit trail records, for the API's `action` filter."""


class AuditEntryOut(Output):
    id: int = Field(description="The entry's id; pass as `before` to page past it.")
    at: datetime = Field(description="When the change was made, in UTC.")
    project_id: UUID
    project_name: str = Field(description="The project's name then.")
    project_environment: Environment = Field(description="The project's environment then.")
    actor_type: Literal["user", "platform", "worker", "operator"]
    actor_id: UUID | None = Field(description="The signed-in user who acted, if one did.")
    action: str = Field(description="`<target>.<verb>`, e.g. `api_key.revoked`.")
    description: str = Field(description="The action in words.")
    target_type: str
    target_id: UUID
    changes: dict[str, Any] = Field(
        description='Audited columns that changed: `{"column": {"before": .., "after": ..}}`.'
    )
    correlation_id: UUID = Field(description="Shared by the entries of one transaction.")
    client_address: str | None
    user_agent: str | None


class AuditPageOut(Output):
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    next_before: int | None = Field(
        description="Pass as `before` for the next, older page; null on the last page."
    )


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
