"""A separate process that publishes through an emitter: the tests' "Django view".

``python tests/emitter_peer.py sync|async URL OPTIONS_JSON``, then one JSON line per call on
stdin, ``[method, args, kwargs]`` (``["batch", [[method, args, kwargs], ...], {}]`` for a
batch); it answers each with a line ``ok`` or ``error <type>: <message>``, and exits at EOF.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from smartsocket import AsyncEmitter, Emitter


def answer(error: BaseException | None) -> None:
    print("ok" if error is None else f"error {type(error).__name__}: {error}", flush=True)


def run_sync(url: str, options: dict[str, Any]) -> None:
    with Emitter(url, **options) as emitter:
        for line in sys.stdin:
            method, args, kwargs = json.loads(line)
            try:
                if method == "batch":
                    with emitter.batch() as batch:
                        for name, each_args, each_kwargs in args:
                            getattr(batch, name)(*each_args, **each_kwargs)
                else:
                    getattr(emitter, method)(*args, **kwargs)
            except Exception as exc:
                answer(exc)
            else:
                answer(None)


async def run_async(url: str, options: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    async with AsyncEmitter(url, **options) as emitter:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            method, args, kwargs = json.loads(line)
            try:
                if method == "batch":
                    async with emitter.batch() as batch:
                        for name, each_args, each_kwargs in args:
                            getattr(batch, name)(*each_args, **each_kwargs)
                else:
                    await getattr(emitter, method)(*args, **kwargs)
            except Exception as exc:
                answer(exc)
            else:
                answer(None)


if __name__ == "__main__":
    mode, url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if mode == "sync":
        run_sync(url, options)
    else:
        asyncio.run(run_async(url, options))
