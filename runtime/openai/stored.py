"""Stored chat completions (OpenAI's API): `store: true` keeps a completion's request and response for the key that
made it, and GET /v1/chat/completions[/{id}[/messages]] and DELETE /v1/chat/completions/{id} read and remove them.

A key sees only its own completions (the spec's `api_key` and an open server share one owner, None); another key's
id is a 404, as if it did not exist. The database calls (`runtime.store.stored`, imported when first used) run in a
thread, off the event loop. Completions older than the retention are deleted about hourly, on a save.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from runtime.openai.auth import Caller
from runtime.openai.errors import APIError

PURGE_INTERVAL_S = 3600.0
MAX_PAGE = 100


class StoredCompletions:
    def __init__(self, database_url: str | None, retention_days: float):
        self.database_url = database_url
        self.retention = timedelta(days=retention_days)
        self._purged_at = 0.0

    async def save(self, caller: Caller, request: dict[str, Any], response: dict[str, Any]) -> None:
        from runtime.store.stored import StoredCompletion

        completion = StoredCompletion(
            id=response["id"], key_id=caller.key_id, model=response["model"],
            created_at=datetime.now(timezone.utc),  # finer than `created` (seconds): the list's order is this
            metadata=request.get("metadata") or {}, request=request, response=response,
        )  # fmt: skip
        await asyncio.to_thread(self._save, completion)

    def _save(self, completion: Any) -> None:
        from runtime.store.stored import purge_completions, save_completion

        save_completion(self.database_url, completion)
        if time.monotonic() - self._purged_at > PURGE_INTERVAL_S:
            self._purged_at = time.monotonic()
            purge_completions(self.database_url, datetime.now(timezone.utc) - self.retention)

    async def retrieve(self, caller: Caller, completion_id: str) -> dict[str, Any]:
        stored = await self._get(caller, completion_id)
        return stored.response | {"metadata": stored.metadata}

    async def messages(self, caller: Caller, completion_id: str, after: str | None, limit: int, order: str
                       ) -> dict[str, Any]:  # fmt: skip
        stored = await self._get(caller, completion_id)
        messages = [
            {"id": f"{completion_id}-{i}", **message} for i, message in enumerate(stored.request.get("messages", []))
        ]
        if order == "desc":
            messages.reverse()
        start = next((i + 1 for i, m in enumerate(messages) if m["id"] == after), 0) if after else 0
        return _page(messages[start : start + _limit(limit)], start + _limit(limit) < len(messages))

    async def list(self, caller: Caller, model: str | None, after: str | None, limit: int, order: str,
                   metadata: dict[str, str]) -> dict[str, Any]:  # fmt: skip
        from runtime.store.stored import CompletionNotFound, list_completions

        if order not in ("asc", "desc"):
            raise APIError(400, "order must be asc or desc", param="order")
        try:
            found, has_more = await asyncio.to_thread(
                list_completions, self.database_url, caller.key_id, model, after, _limit(limit), order,
                metadata=metadata or None,
            )  # fmt: skip
        except CompletionNotFound as exc:  # `after` names a completion this key does not have
            raise APIError(404, str(exc), param="after") from None
        return _page([c.response | {"metadata": c.metadata} for c in found], has_more)

    async def delete(self, caller: Caller, completion_id: str) -> dict[str, Any]:
        from runtime.store.stored import delete_completion

        if not await asyncio.to_thread(delete_completion, self.database_url, completion_id, caller.key_id):
            raise _not_found(completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    async def _get(self, caller: Caller, completion_id: str) -> Any:
        from runtime.store.stored import get_completion

        stored = await asyncio.to_thread(get_completion, self.database_url, completion_id, caller.key_id)
        if stored is None:
            raise _not_found(completion_id)
        return stored


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise APIError(400, f"limit must be between 1 and {MAX_PAGE}", param="limit")
    return limit


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None, "has_more": has_more,
    }  # fmt: skip


def _not_found(completion_id: str) -> APIError:
    shown = completion_id[:100]
    return APIError(404, f"No stored chat completion found with id '{shown}'", param="completion_id",
                    code="not_found")  # fmt: skip
