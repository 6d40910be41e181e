"""The headers through which the gateway tells upstream services who is calling.

The gateway removes any client-supplied header with this prefix before setting its own, so an
upstream can trust them.
"""

from __future__ import annotations

from typing import Final

IDENTITY_HEADER_PREFIX: Final = "x-parity-"
PROJECT_ID_HEADER: Final = "x-parity-project-id"
ENVIRONMENT_HEADER: Final = "x-parity-environment"
KEY_KIND_HEADER: Final = "x-parity-key-kind"
KEY_ID_HEADER: Final = "x-parity-key-id"
IDENTITY_HEADERS: Final = (PROJECT_ID_HEADER, ENVIRONMENT_HEADER, KEY_KIND_HEADER, KEY_ID_HEADER)
