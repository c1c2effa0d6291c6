"""Room names as channel tokens and back (cluster/channels.py): a node names the rooms whose
messages were lost in flight from their channels (cluster/gaps.py)."""

from __future__ import annotations

import pytest

from smartsocket.cluster.channels import channel_token, room_channel, token_room


@pytest.mark.parametrize("room", ["lobby", "game:42", "a.b", "~x", "ünï cödé", "a/b c", "x" * 128])
def test_a_room_comes_back_from_its_token(room: str) -> None:
    token = channel_token(room)
    assert "." not in token and " " not in token
    assert token_room(token) == room
    assert room_channel("p", room) == f"p.room.{token}"


@pytest.mark.parametrize("token", ["", "~%%%", "~" + "_w"])
def test_an_invalid_token_names_no_room(token: str) -> None:
    assert token_room(token) is None
