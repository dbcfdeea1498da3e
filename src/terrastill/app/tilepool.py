"""Tile rendering off the event loop, bounded: a few threads, a short queue, a time budget,
and work dropped when the client has gone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastapi import HTTPException, Request


class TilePool:
    """``render`` runs ``fn`` on one of ``workers`` threads. At most ``queue`` renders wait or
    run at once (more: 503, try again); a render over ``timeout_s`` answers 503 and its result
    is dropped; a client that disconnects stops waiting and a render not yet started is
    cancelled."""

    def __init__(self, workers: int = 4, queue: int = 64, timeout_s: float = 10.0) -> None:
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="terrastill-tile")
        self.slots = threading.BoundedSemaphore(queue)
        self.timeout_s = timeout_s
        self.queue = queue

    async def render(self, request: Request, fn: Callable[..., bytes], *args: Any) -> bytes:
        if not self.slots.acquire(blocking=False):
            raise HTTPException(503, f"{self.queue} tiles are being rendered; try again",
                                headers={"Retry-After": "1"})
        fut: Future[bytes] = self.executor.submit(fn, *args)
        fut.add_done_callback(lambda _f: self.slots.release())
        wrapped = asyncio.wrap_future(fut)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            done, _ = await asyncio.wait({wrapped}, timeout=0.1)
            if done:
                return wrapped.result()
            if await request.is_disconnected():
                fut.cancel()  # not started yet: never runs; running: its result is dropped
                raise HTTPException(499, "client disconnected")
            if loop.time() > deadline:
                fut.cancel()
                raise HTTPException(503, f"tile took longer than {self.timeout_s:g} s; try a "
                                         "closer zoom", headers={"Retry-After": "5"})

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
