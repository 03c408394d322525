"""What an aana API key looks like, for the store that makes keys and the ingress that checks them. Pure: no database.

A key reads `aana-` + 8 lowercase letters or digits (its prefix, what a key is listed, revoked and looked up by) +
`_` + URL-safe characters; what is kept of it is the prefix and the sha256 of the whole key.
"""

from __future__ import annotations

import hashlib
import string

KEY_PREFIX = "aana-"
PREFIX_LENGTH = len(KEY_PREFIX) + 8
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
SEPARATOR = "_"


def hash_key(secret: str) -> str:
    """The sha256 hex digest of the whole key text."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_prefix(secret: str) -> str | None:
    """The lookup part of a key ("aana-" and 8 characters), or None when `secret` is not shaped like one of ours."""
    if len(secret) <= PREFIX_LENGTH + 1 or not secret.startswith(KEY_PREFIX) or secret[PREFIX_LENGTH] != SEPARATOR:
        return None
    head = secret[:PREFIX_LENGTH]
    return head if all(c in PREFIX_ALPHABET for c in head[len(KEY_PREFIX) :]) else None
