"""Stored chat completions on SQLite and PostgreSQL: kept whole, seen only by their key, paged, deleted, purged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runtime.store import migrate
from runtime.store.errors import StoreError
from runtime.store.stored import (
    CompletionNotFound,
    StoredCompletion,
    delete_completion,
    get_completion,
    list_completions,
    purge_completions,
    save_completion,
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def url(database_url):
    migrate.upgrade(database_url)
    return database_url


def completion(n: int, key_id: str | None = "key-a", model: str = "smollm2", at: datetime | None = None):
    return StoredCompletion(
        id=f"chatcmpl-{n:03d}",
        key_id=key_id,
        model=model,
        created_at=at or T0 + timedelta(seconds=n),
        metadata={"n": str(n)},
        request={"model": model, "messages": [{"role": "user", "content": f"hi {n}"}], "store": True},
        response={"id": f"chatcmpl-{n:03d}", "object": "chat.completion", "choices": []},
    )


def ids(page: tuple[list[StoredCompletion], bool]) -> tuple[list[str], bool]:
    items, has_more = page
    return [c.id.removeprefix("chatcmpl-") for c in items], has_more


def test_a_completion_comes_back_whole_even_with_text_postgresql_cannot_hold(url):
    odd = completion(1)
    odd = StoredCompletion(
        **{**odd.__dict__, "request": {"messages": [{"role": "user", "content": "nul \x00, surrogate \ud800, 日本"}]}}
    )
    save_completion(url, odd)
    assert get_completion(url, odd.id, "key-a") == odd


def test_only_the_owner_sees_or_deletes_it(url):
    save_completion(url, completion(1, key_id="key-a"))
    save_completion(url, completion(2, key_id=None))

    assert get_completion(url, "chatcmpl-001", "key-b") is None
    assert get_completion(url, "chatcmpl-001", None) is None  # no key sees only completions made without one
    assert get_completion(url, "chatcmpl-002", "key-a") is None
    assert get_completion(url, "chatcmpl-002", None) == completion(2, key_id=None)
    assert ids(list_completions(url, "key-b")) == ([], False)
    assert ids(list_completions(url, None)) == (["002"], False)

    assert not delete_completion(url, "chatcmpl-001", "key-b")
    assert delete_completion(url, "chatcmpl-001", "key-a")
    assert not delete_completion(url, "chatcmpl-001", "key-a")
    assert get_completion(url, "chatcmpl-001", "key-a") is None


def test_pages_follow_the_after_cursor_in_either_order(url):
    for n in range(1, 6):
        save_completion(url, completion(n))
    # Two made in the same instant: ordered by id.
    save_completion(url, completion(7, at=T0 + timedelta(seconds=3)))
    save_completion(url, completion(8, key_id="key-b"))

    assert ids(list_completions(url, "key-a", limit=3)) == (["001", "002", "003"], True)
    assert ids(list_completions(url, "key-a", after="chatcmpl-003", limit=3)) == (["007", "004", "005"], False)
    assert ids(list_completions(url, "key-a", after="chatcmpl-007", limit=2)) == (["004", "005"], False)
    assert ids(list_completions(url, "key-a", limit=4, order="desc")) == (["005", "004", "007", "003"], True)
    assert ids(list_completions(url, "key-a", after="chatcmpl-007", order="desc")) == (["003", "002", "001"], False)
    assert ids(list_completions(url, "key-a", after="chatcmpl-005")) == ([], False)


def test_the_model_filter_and_a_cursor_that_is_not_yours(url):
    save_completion(url, completion(1))
    save_completion(url, completion(2, model="minilm"))
    save_completion(url, completion(3, key_id="key-b"))

    assert ids(list_completions(url, "key-a", model="minilm")) == (["002"], False)
    for after in ("chatcmpl-003", "chatcmpl-404"):
        with pytest.raises(CompletionNotFound, match=f"no stored chat completion '{after}' to list after"):
            list_completions(url, "key-a", after=after)
    with pytest.raises(ValueError):
        list_completions(url, "key-a", limit=0)


def test_a_metadata_filter_still_fills_the_page(url):
    for n in range(1, 8):
        made = completion(n)
        save_completion(url, StoredCompletion(**{**made.__dict__, "metadata": {"team": "a" if n % 3 else "b"}}))

    assert ids(list_completions(url, "key-a", metadata={"team": "a"}, limit=2)) == (["001", "002"], True)
    assert ids(list_completions(url, "key-a", metadata={"team": "a"}, after="chatcmpl-002", limit=2)) == (
        ["004", "005"],
        True,
    )
    assert ids(list_completions(url, "key-a", metadata={"team": "b"}, order="desc")) == (["006", "003"], False)
    assert ids(list_completions(url, "key-a", metadata={"team": "c"})) == ([], False)


def test_purge_deletes_what_is_older_than_the_retention(url):
    for n in (1, 2, 3):
        save_completion(url, completion(n, key_id=None if n == 2 else "key-a"))
    assert purge_completions(url, T0 + timedelta(seconds=3)) == 2
    assert ids(list_completions(url, "key-a")) == (["003"], False)
    assert purge_completions(url, T0) == 0


def test_an_id_is_kept_once(url):
    save_completion(url, completion(1))
    with pytest.raises(StoreError, match="could not write to the database"):
        save_completion(url, completion(1))
