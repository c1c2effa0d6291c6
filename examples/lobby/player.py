"""A lobby player bot: logs in with its token, joins the first open game (or creates one),
answers the ready check, prints what happens and exits once its game has started.

    python examples/lobby/player.py ws://localhost:8080/ --token bob-token
    python examples/lobby/player.py ws://localhost:8080/ --token alice-token --host-game "Chess"
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from smartsocket import Client


def show(text: str) -> None:
    print(text, flush=True)


async def play(url: str, token: str, host_game: str | None, wait_players: int) -> None:
    client = Client(url, headers={"Authorization": f"Bearer {token}"}, reconnect=False)
    started: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
    joined = asyncio.Event()
    count = 0

    def on_joined(data: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        show(f"{data['player']} joined game {data['game']}")
        if count + 1 >= wait_players:
            joined.set()

    def on_ready_check(data: dict[str, Any]) -> bool:
        show(f"ready check for game {data['game']}: ready")
        return True  # the ack answer the server awaits

    def on_started(data: dict[str, Any]) -> None:
        if not started.done():
            started.set_result(data["players"])

    client.on("player_joined", on_joined)
    client.on("player_left", lambda d: show(f"{d['player']} left game {d['game']}"))
    client.on("ready_check", on_ready_check)
    client.on("game_started", on_started)
    await client.connect()
    try:
        if host_game is not None:
            game = await client.call("create_game", {"name": host_game})
            show(f"hosting game {game['id']} ({game['name']}), waiting for players")
            await joined.wait()
            await client.call("start_game", {"game": game["id"]})
        else:
            open_games = [g for g in await client.call("list_games") if not g["started"]]
            if not open_games:
                show("no open game")
                return
            game = await client.call("join_game", {"game": open_games[0]["id"]})
            show(f"joined game {game['id']} ({game['name']}) hosted by {game['host']}")
        players = await asyncio.wait_for(started, 30)
        show(f"game started with {', '.join(players)}")
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://localhost:8080/")
    parser.add_argument("--token", required=True)
    parser.add_argument("--host-game", metavar="NAME", help="create a game and start it")
    parser.add_argument("--players", type=int, default=2, help="players to wait for (host)")
    args = parser.parse_args()
    asyncio.run(play(args.url, args.token, args.host_game, args.players))


if __name__ == "__main__":
    main()
