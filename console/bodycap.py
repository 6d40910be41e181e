"""A cap on request bodies, enforced while the body is read and before anything parses it.

Pure ASGI: a declared `Content-Length` over the cap is refused before a byte of the body is read;
otherwise the `http.request` messages are counted as they arrive and the request is refused as
soon as the count passes the cap, so no more of the body is read (the server stops reading the
socket, then closes the connection).
"""

from __future__ import annotations

import json
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CODE: Final = "REQUEST_TOO_LARGE"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


def too_large_body(limit: int) -> bytes:
    error = {
        "code": CODE,
        "message": f"the request body is larger than {limit} bytes",
        "hint": f"send at most {limit} bytes (CONSOLE_MAX_BODY_BYTES)",
    }
    return json.dumps({"error": error}).encode()


class BodyCap:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(send)
                return
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyTooLarge:
            # Raised where nothing turned it into a response (e.g. a body read outside a route).
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = too_large_body(self.max_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
