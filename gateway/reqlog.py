"""Request logs. Every request gets one info line; a project whose environment logs at debug
(dev and staging, per `get_environment_config`) also gets a debug record with the full request and
response, bodies capped and redacted. Nothing here ever shows a body for prod."""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from shared.apikeys import Credential
from shared.environment import get_environment_config
from shared.logging import describe_body, logs_json, redact_headers, redact_text


# Not frozen, though nothing changes it: a frozen dataclass sets each field through
# object.__setattr__, about 0.5 us per instance here, and a request builds one of these, a
# Decision and an UpstreamResponse.
@dataclass(slots=True)
class Exchange:
    """One request and its answer, as far as the gateway got."""

    method: str
    path: str
    query: str
    status: int
    duration_ms: float
    credential: Credential | None
    error_code: str | None = None


def log_request(exchange: Exchange) -> None:
    """The one info line every request gets."""
    credential = exchange.credential
    target = redact_text(exchange.path + ("?" + exchange.query if exchange.query else ""))
    project = credential.project_id if credential else "-"
    env = credential.project_environment.value if credential else "-"
    key = credential.display if credential else "-"
    error = f" error={exchange.error_code}" if exchange.error_code else ""
    line = (
        f"{exchange.method} {target} -> {exchange.status} in {exchange.duration_ms:.1f} ms"
        f" project={project} env={env} key={key}{error}"
    )
    if not logs_json():
        # Without arguments loguru takes the message as it is: no template to parse per request,
        # and no fields copied into `extra`, which text lines never show. (A brace in a path is
        # just text either way.)
        logger.info(line)
        return
    # JSON lines carry the fields in `extra` for queries; the "{}" template formats to the line.
    logger.info(
        "{}",
        line,
        method=exchange.method,
        target=target,
        status=exchange.status,
        duration_ms=exchange.duration_ms,
        project=project,
        env=env,
        key=key,
        error=error,
    )


def logs_bodies(credential: Credential | None) -> bool:
    """Whether this request's project wants the debug record with bodies."""
    return (
        credential is not None
        and get_environment_config(credential.project_environment).logs_bodies
    )


def log_bodies(
    exchange: Exchange,
    *,
    request_headers: list[tuple[bytes, bytes]],
    request_body: bytes,
    response_headers: list[tuple[bytes, bytes]],
    response_body: bytes,
    cap: int,
) -> None:
    """The debug record of a dev or staging request: headers and bodies, redacted and capped.

    Its cost is bounded by `cap` whatever the bodies (see `describe_body`), and it never raises:
    the answer has been sent, and a record that cannot be written is replaced by a warning
    that says so, without the request's content."""
    if not logs_bodies(exchange.credential):
        return
    try:
        request = _decoded(request_headers)
        response = _decoded(response_headers)
        logger.debug(
            "{method} {target} -> {status} request headers={request_headers}"
            " request body={request_body} response headers={response_headers}"
            " response body={response_body}",
            method=exchange.method,
            target=redact_text(exchange.path + ("?" + exchange.query if exchange.query else "")),
            status=exchange.status,
            request_headers=redact_headers(request),
            request_body=describe_body(request_body, _content_type(request), cap=cap),
            response_headers=redact_headers(response),
            response_body=describe_body(response_body, _content_type(response), cap=cap),
        )
    except Exception as exc:
        logger.warning(
            "debug record of {} {} -> {} not written: {}",
            exchange.method,
            redact_text(exchange.path),
            exchange.status,
            type(exc).__name__,
        )


def _decoded(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _content_type(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if name.lower() == "content-type":
            return value
    return ""
