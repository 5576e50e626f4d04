"""What no response may carry: internals in error bodies, and server-side secrets."""

from __future__ import annotations

import base64
import re

# Signs of internals in an error body: stack traces, source paths, SQL, driver and
# library names, Python exception class names, reprs of Python objects.
_INTERNALS = [
    re.compile(p)
    for p in (
        r"Traceback",
        r'File "',
        r"\.py\b",
        r"(?<![\w.])/(?:home|root|work|tmp|usr|opt|var|srv|app)/",
        r"(?i)\bselect\b[^\"]{0,80}\bfrom\b",
        r"(?i)\binsert into\b|\bupdate \w+ set\b|\bon conflict\b",
        r"(?i)sqlalchemy|psycopg|sqlite3|onnxruntime|numpy|pydantic_core|starlette|uvicorn",
        r"\b[A-Z][A-Za-z]+(?:Error|Exception)\b",
        r"<[a-z_.]+ object at 0x",
        r"\bat 0x[0-9a-f]{6,}",
    )
]


def internals_in(body: str) -> list[str]:
    """The internal-looking fragments found in ``body`` (empty when clean)."""
    return [m.group(0) for pattern in _INTERNALS for m in [pattern.search(body)] if m]


def secret_forms(secret: bytes) -> list[bytes]:
    """The ways a binary secret could be written into a response."""
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
        base64.b64encode(secret).rstrip(b"="),
    ]


def leaked(body: bytes, secrets: list[bytes]) -> bool:
    """Whether any form of any of ``secrets`` occurs in ``body``."""
    return any(form in body for secret in secrets for form in secret_forms(secret))
