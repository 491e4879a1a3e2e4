"""Redis calls of concurrent callers, sent together as one pipeline.

A service that handles many requests or deliveries at once makes the same few calls
for each (ingest: one incident script per webhook; the dispatcher: claim and finish
per delivery). One round trip per call costs more CPU than the work itself. A call
handed to :class:`CoalescedCalls` is queued; once the event loop has run what was
ready (``turns`` turns), every queued call goes out in one pipeline (not a
transaction: each call stands alone, as if sent by itself), at most ``max_batch``
per pipeline. Each caller then gets its own reply, or its own error: a caller told
its write is done can rely on it, exactly as with a command of its own. With Redis's
``appendfsync always``, one pipeline of writes is also one ``fsync``.

The pipeline is sent as redis-py's would be (a pooled connection, one write, the replies
read in order, the client's retries of a refused or reset connection), but each command
is packed whole by hiredis, not argument by argument in Python: that packing cost more
than the rest of a call (a delivery's claim, an incident's commit). Replies go through
redis-py's reply conversion for the command (``SET`` answers True, as it does alone).

A caller cancelled after queueing does not take its call back unless the pipeline
has not been sent yet: like a command already on the wire, a sent call runs. A failed
pipeline (the connection dropped) fails every call in it; nobody's call is known done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, KeyT

MAX_BATCH: Final = 512
"""Calls in one pipeline at most; a larger burst goes out as several."""

Call = tuple[tuple[EncodableT, ...], "asyncio.Future[Any]"]
"""A queued command, and the future its caller awaits."""


class CoalescedCalls:
    def __init__(self, redis: Redis, *, max_batch: int = MAX_BATCH, turns: int = 1) -> None:
        """``turns``: how many turns of the event loop a first call waits for others. Two
        suit callers that start tasks which then call (a batch of jobs just started makes
        its calls in the next turn, and joins the same pipeline)."""
        self._redis = redis
        self._max_batch = max_batch
        self._turns = max(turns, 1)
        self._queued: list[Call] = []
        self._flushing_on: asyncio.AbstractEventLoop | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def command(self, *args: EncodableT) -> asyncio.Future[Any]:
        """Queue one command; its reply (or error) arrives on the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._flushing_on is not loop:  # the first call of this batch
            # (Calls left by a loop that stopped before sending them are dropped.)
            self._queued = [call for call in self._queued if not call[1].done()]
            self._flushing_on = loop
            self._schedule(loop, self._turns)
        self._queued.append((args, future))
        return future

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command: its reply, or its error raised (redis-py's, as for any command)."""
        return await self.command(*args)

    async def script(
        self, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT]
    ) -> Any:
        """Run a registered Lua script (loading it first if the server lacks it)."""
        try:
            return await self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed server: this call loads it, alone
            return await script(keys=keys, args=args)

    def _schedule(self, loop: asyncio.AbstractEventLoop, turns: int) -> None:
        if turns <= 1:
            loop.call_soon(self._flush)
        else:
            loop.call_soon(self._schedule, loop, turns - 1)

    def _flush(self) -> None:
        calls = [call for call in self._queued if not call[1].done()]  # not cancelled
        self._queued = []
        self._flushing_on = None
        for start in range(0, len(calls), self._max_batch):
            task = asyncio.create_task(self._send(calls[start : start + self._max_batch]))
            self._sending.add(task)  # a task nobody holds may be collected mid-flight
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[Call]) -> None:
        try:
            replies = await self._exchange([args for args, _ in calls])
        except asyncio.CancelledError:
            for _, future in calls:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: nobody's call is known done
            for _, future in calls:
                if not future.done():
                    future.set_exception(_own_copy(exc))
            return
        for (_, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _exchange(self, commands: list[tuple[EncodableT, ...]]) -> list[Any]:
        """Every command's reply, or its error reply, in order, over one connection."""
        pool = self._redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            replies: list[Any] = await connection.retry.call_with_retry(
                lambda: self._write_and_read(connection, commands),
                lambda error: connection.disconnect(),  # and the retry reconnects
            )
        except BaseException:
            await connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            await pool.release(connection)
        return replies

    async def _write_and_read(
        self, connection: AbstractConnection, commands: list[tuple[EncodableT, ...]]
    ) -> list[Any]:
        # (hiredis's stub types its argument as a 1-tuple; it takes any length)
        packed = b"".join([hiredis.pack_command(command) for command in commands])  # type: ignore[arg-type]
        await connection.send_packed_command(packed)
        callbacks = self._redis.response_callbacks
        replies: list[Any] = []
        for command in commands:
            try:
                reply = await connection.read_response()
            except ResponseError as exc:
                replies.append(exc)
                continue
            convert = callbacks.get(command[0]) if isinstance(command[0], str) else None
            replies.append(reply if convert is None else convert(reply))
        return replies


def _own_copy(exc: Exception) -> Exception:
    """``exc`` for one caller: each raises its own instance (one instance raised in many
    tasks would collect all their tracebacks), caused by the shared one."""
    try:
        copy = type(exc)(*exc.args)
    except Exception:  # an exception type that cannot be rebuilt from its args
        return exc
    copy.__cause__ = exc
    return copy
