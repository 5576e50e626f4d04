"""API keys: generation, parsing and hashing.

A key reads `dn_<key_id>_<secret>`. The key_id is a public lookup handle
(indexed in the store); only a hash of the whole key is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass, field

KEY_PREFIX = "dn_"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 32

# Letters and digits only: URL-safe, and no "_" so the separators stay
# unambiguous. 62 symbols give ~71 bits for the key_id, ~190 for the secret.
_ALPHABET = string.ascii_letters + string.digits
_ALPHABET_SET = frozenset(_ALPHABET)
_KEY_LENGTH = len(KEY_PREFIX) + KEY_ID_LENGTH + 1 + SECRET_LENGTH


def _random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def generate_api_key() -> tuple[str, str]:
    """Draw a fresh key from the OS CSPRNG; returns (key, key_id)."""
    key_id = _random_token(KEY_ID_LENGTH)
    return f"{KEY_PREFIX}{key_id}_{_random_token(SECRET_LENGTH)}", key_id


def parse_key_id(key: str) -> str | None:
    """The key_id of a well-formed key, or None when the key is malformed."""
    if not isinstance(key, str) or len(key) != _KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return None
    key_id_end = len(KEY_PREFIX) + KEY_ID_LENGTH
    key_id, separator, secret = (
        key[len(KEY_PREFIX) : key_id_end],
        key[key_id_end],
        key[key_id_end + 1 :],
    )
    if separator != "_" or not _ALPHABET_SET.issuperset(key_id + secret):
        return None
    return key_id


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """An API key as a request presents it, parsed and hashed once: ``key_id`` looks
    the tenant up, ``key_hash`` is compared with the stored hash (and keys caches)."""

    key_id: str
    key_hash: str = field(repr=False)

    @classmethod
    def parse(cls, key: str) -> PresentedKey | None:
        """None for a malformed key (no database lookup can match it)."""
        key_id = parse_key_id(key)
        return None if key_id is None else cls(key_id, hash_api_key(key))

    def matches(self, stored_hash: str) -> bool:
        """Constant-time comparison with a stored hash."""
        return hmac.compare_digest(self.key_hash, stored_hash)


def hash_api_key(key: str) -> str:
    """Hex SHA-256 of the whole key.

    A plain fast hash is the right tool here, unlike for passwords: the key
    carries ~190 random bits, so brute force over the hash is hopeless and a
    slow KDF (bcrypt, argon2) would only add latency to every request.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def verify(key: str, stored_hash: str) -> bool:
    """Whether `key` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_api_key(key), stored_hash)
