"""A terminal chat client: each line you type is said in the room; what others say is printed.

    python examples/chat/client.py ws://localhost:8080/ --name alice --room lobby

End with Ctrl-D (end of input). The client reconnects by itself if the server restarts, and
joins its room again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from smartsocket import AckError, Client


def show(text: str) -> None:
    print(text, flush=True)


async def chat(url: str, name: str, room: str) -> None:
    client = Client(url)

    async def join() -> None:
        answer = await client.call("join", {"room": room, "name": name})
        for line in answer["history"]:
            show(f"  {line['name']}: {line['text']}")
        show(f"joined {room} with: {', '.join(answer['members'])}")

    rejoins: set[asyncio.Task[None]] = set()
    first = True

    def on_connect() -> None:
        nonlocal first
        if not first:  # reconnected: a new socket on the server, join the room again
            task = asyncio.ensure_future(join())
            rejoins.add(task)
            task.add_done_callback(rejoins.discard)
        first = False

    client.on("connect", on_connect)
    client.on("message", lambda m: show(f"{m['name']}: {m['text']}"))
    client.on("joined", lambda m: show(f"* {m['name']} joined"))
    client.on("left", lambda m: show(f"* {m['name']} left"))
    client.on("reconnecting", lambda attempt: show(f"* reconnecting (attempt {attempt})"))
    await client.connect()
    await join()
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break  # end of input
            text = line.rstrip("\n")
            if text:
                try:
                    await client.call("say", {"text": text})
                except AckError as exc:
                    show(f"! {exc.message}")
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://localhost:8080/")
    parser.add_argument("--name", required=True)
    parser.add_argument("--room", default="lobby")
    args = parser.parse_args(argv)
    asyncio.run(chat(args.url, args.name, args.room))


if __name__ == "__main__":
    main()
