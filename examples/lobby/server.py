"""An authenticated game lobby: players log in with a token, create and join games (one room
per game), and the host starts a game after a ready check, a server-to-client call that each
player answers.

    python examples/lobby/server.py --port 8080
    LOBBY_TOKENS="s3cret:alice,t0ken:bob" python examples/lobby/server.py

Tokens go in the upgrade (``Authorization: Bearer <token>`` or ``?token=``) or in a first
``$auth`` message; a wrong one gets HTTP 401. Events (all answered with an ack; refusals are
ack errors with a code):

- ``list_games`` -> ``[{"id", "name", "host", "players", "max_players", "started"}]``
- ``create_game`` ``{"name", "max_players"}`` -> the game; the creator hosts and joins it
- ``join_game`` ``{"game"}`` -> the game; its room gets ``player_joined`` ``{"game", "player"}``
  (``no_such_game``, ``game_full``, ``already_started``)
- ``leave_game`` ``{"game"}`` -> ``{"left": game}``; the room gets ``player_left``
- ``start_game`` ``{"game"}`` (host only: ``not_host``) -> ``{"players": [...]}``: the server
  calls ``ready_check`` on every player (a client ack, 5 s), keeps those who answer ``true``
  and sends the room ``game_started`` ``{"game", "players"}``
- ``move`` ``{"game", "move"}`` -> ``{"ok": true}``; the other players get ``move``
  ``{"game", "player", "move"}``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec

from smartsocket import AckError, AckTimeout, Config, ConnectionClosed, SmartSocket, Socket
from smartsocket.security import AuthRequest

DEMO_TOKENS = "alice-token:alice,bob-token:bob,carol-token:carol"


class NewGame(msgspec.Struct):
    name: str
    max_players: int = 4


class GameRef(msgspec.Struct):
    game: int


class Move(msgspec.Struct):
    game: int
    move: Any


@dataclass
class Game:
    id: int
    name: str
    host: str
    max_players: int
    players: dict[str, Socket] = field(default_factory=dict)
    started: bool = False

    @property
    def room(self) -> str:
        return f"game:{self.id}"

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "host": self.host,
                "players": sorted(self.players), "max_players": self.max_players,
                "started": self.started}


def parse_tokens(spec: str) -> dict[str, str]:
    """``"token:name,token:name"`` -> {token: name}."""
    pairs = (item.split(":", 1) for item in spec.split(",") if ":" in item)
    return {token.strip(): name.strip() for token, name in pairs}


def create_server(
    config: Config | None = None, tokens: dict[str, str] | None = None
) -> SmartSocket:
    server = SmartSocket(config=config)
    players = tokens if tokens is not None else parse_tokens(
        os.environ.get("LOBBY_TOKENS", DEMO_TOKENS)
    )
    games: dict[int, Game] = {}
    ids = itertools.count(1)

    @server.authenticate
    def authenticate(request: AuthRequest) -> str | None:
        return players.get(request.token or "")  # the player's name becomes socket.identity

    def game_of(ref: int) -> Game:
        game = games.get(ref)
        if game is None:
            raise AckError("no_such_game", f"no game {ref}")
        return game

    def leave(socket: Socket, game: Game) -> None:
        name = socket.identity
        if game.players.pop(name, None) is None:
            return
        socket.leave(game.room)
        server.room(game.room).broadcast("player_left", {"game": game.id, "player": name})
        if not game.players:
            del games[game.id]

    @server.on("list_games")
    def list_games(socket: Socket, data: Any) -> list[dict[str, Any]]:
        return [game.view() for game in games.values()]

    @server.on("create_game")
    def create_game(socket: Socket, data: NewGame) -> dict[str, Any]:
        if not 2 <= data.max_players <= 16:
            raise AckError("bad_request", "max_players must be 2-16")
        game = Game(next(ids), data.name[:64], socket.identity, data.max_players)
        games[game.id] = game
        game.players[socket.identity] = socket
        socket.join(game.room)
        return game.view()

    @server.on("join_game")
    def join_game(socket: Socket, data: GameRef) -> dict[str, Any]:
        game = game_of(data.game)
        if socket.identity in game.players:
            return game.view()
        if game.started:
            raise AckError("already_started", "this game has started")
        if len(game.players) >= game.max_players:
            raise AckError("game_full", f"{game.max_players} players already")
        server.room(game.room).broadcast("player_joined",
                                         {"game": game.id, "player": socket.identity})
        game.players[socket.identity] = socket
        socket.join(game.room)
        return game.view()

    @server.on("leave_game")
    def leave_game(socket: Socket, data: GameRef) -> dict[str, Any]:
        leave(socket, game_of(data.game))
        return {"left": data.game}

    @server.on("start_game")
    async def start_game(socket: Socket, data: GameRef) -> dict[str, Any]:
        game = game_of(data.game)
        if game.host != socket.identity:
            raise AckError("not_host", "only the host starts the game")
        if game.started:
            raise AckError("already_started", "this game has started")

        async def ready(name: str, player: Socket) -> str | None:
            try:  # server-to-client call: the client's handler return value is the answer
                answer = await player.call("ready_check", {"game": game.id}, timeout=5)
            except (AckTimeout, AckError, ConnectionClosed):
                return None
            return name if answer is True else None

        answers = await asyncio.gather(*(ready(n, s) for n, s in list(game.players.items())))
        ready_players = sorted(name for name in answers if name is not None)
        if len(ready_players) < 2:
            raise AckError("not_enough_players", "fewer than 2 players are ready")
        game.started = True
        server.room(game.room).broadcast("game_started",
                                         {"game": game.id, "players": ready_players})
        return {"players": ready_players}

    @server.on("move")
    def move(socket: Socket, data: Move) -> dict[str, bool]:
        game = game_of(data.game)
        if not game.started or socket.identity not in game.players:
            raise AckError("not_playing", "you are not playing this game")
        server.room(game.room).broadcast(
            "move", {"game": game.id, "player": socket.identity, "move": data.move},
            exclude=socket,
        )
        return {"ok": True}

    @server.on("disconnect")
    def gone(socket: Socket, reason: str) -> None:
        for game in [g for g in games.values() if socket.identity in g.players]:
            leave(socket, game)

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    server = create_server(Config.from_env(**overrides))
    server.listen(lambda: print(f"lobby listening on {server.url}", flush=True))


if __name__ == "__main__":
    main()
