"""The store's error types: every failure a person can fix is one of these, with the fix in its message."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used as asked: bad URL, missing driver, unreachable server, unknown revision."""


class SchemaError(StoreError):
    """The database schema does not match this version of aana (behind: run `aana migrate`; ahead: upgrade aana)."""
