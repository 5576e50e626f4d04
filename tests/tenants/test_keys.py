"""API keys: format, parsing, hashing and constant-time verification."""

from __future__ import annotations

import hashlib
import re

import pytest

from service.tenants.keys import generate_api_key, hash_api_key, parse_key_id, verify

KEY_FORMAT = re.compile(r"dn_([A-Za-z0-9]{12})_([A-Za-z0-9]{32})")


def test_generated_key_has_documented_format_and_returns_its_key_id() -> None:
    key, key_id = generate_api_key()
    match = KEY_FORMAT.fullmatch(key)
    assert match is not None
    assert match.group(1) == key_id


def test_generated_keys_are_unique() -> None:
    keys = {generate_api_key()[0] for _ in range(500)}
    key_ids = {parse_key_id(key) for key in keys}
    assert len(keys) == 500
    assert len(key_ids) == 500


def test_parse_key_id_reads_the_id_of_a_well_formed_key() -> None:
    key, key_id = generate_api_key()
    assert parse_key_id(key) == key_id


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "dn_",
        "not-a-key",
        "xx_abcdefghijkl_" + "a" * 32,  # wrong prefix
        "dn_abcdefghijkl-" + "a" * 32,  # wrong separator
        "dn_abcdefghijk_" + "a" * 33,  # key_id one short
        "dn_abcdefghijkl_" + "a" * 31,  # secret one short
        "dn_abcdefghijkl_" + "a" * 33,  # secret one long
        "dn_abcdefghij!l_" + "a" * 32,  # character outside the alphabet
        "dn_abcdefghijkl_" + "a" * 31 + "\n",
        "dn_abcdéfghijkl_" + "a" * 32,
    ],
)
def test_parse_key_id_rejects_malformed_keys(malformed: str) -> None:
    assert parse_key_id(malformed) is None


def test_parse_key_id_rejects_non_strings() -> None:
    assert parse_key_id(None) is None  # type: ignore[arg-type]
    assert parse_key_id(b"dn_abcdefghijkl_" + b"a" * 32) is None  # type: ignore[arg-type]


def test_hash_is_sha256_hex_of_the_whole_key_and_not_the_key() -> None:
    key, _ = generate_api_key()
    digest = hash_api_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert key not in digest


def test_verify_accepts_the_key_and_rejects_any_other() -> None:
    key, _ = generate_api_key()
    other, _ = generate_api_key()
    stored = hash_api_key(key)
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert verify(key, stored)
    assert not verify(other, stored)
    assert not verify(tampered, stored)
