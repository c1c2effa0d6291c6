"""Observability: every figure checked against traffic the test makes and counts itself."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from smartsocket import Client, SmartSocket, compression
from smartsocket.demo import create_app
from smartsocket.protocol.envelope import encode_ack, encode_event
from smartsocket.testing import running, wait_for

TEXT = "the quick brown fox jumps over the lazy dog " * 30  # compressible, > threshold


async def fetch(server: SmartSocket, path: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()

    return await asyncio.get_running_loop().run_in_executor(None, get)


async def test_counts_messages_and_bytes_exactly() -> None:
    server = SmartSocket(enable_compression=False)
    server.on("echo", lambda socket, data: data)
    async with running(server):
        client = Client(server.url, reconnect=False, compression=False)
        await client.connect()
        sent = [encode_event("echo", f"message {i}", i + 1) for i in range(20)]
        replies = [encode_ack(i + 1, f"message {i}") for i in range(20)]
        for i in range(20):
            await client.call("echo", f"message {i}")
        raw = server.stats()["raw"]
        welcome = server._connections.welcome_payload(next(iter(server.sockets.values())))
        assert raw["messagesIn"] == 20
        assert raw["bytesIn"] == raw["bytesInWire"] == sum(map(len, sent))
        assert raw["messagesOut"] == 21
        expected_out = sum(map(len, replies)) + len(welcome)
        assert raw["bytesOutPayload"] == raw["bytesOutWire"] == expected_out
        t = server.stats()["transmission"]
        assert t["totalMessages"] == 41 and t["bandwidthSaved"] == "0.0%"
        await client.close()


async def test_compression_saved_is_wire_versus_payload() -> None:
    async with running(create_app()) as server:
        clients = [Client(server.url, reconnect=False) for _ in range(3)]
        for c in clients:
            await c.connect()
            await c.call("join", {"room": "r"})
        got: list[Any] = []
        for c in clients[1:]:
            c.on("chat", got.append)
        before = server.stats()["raw"]
        await clients[0].call("chat", {"room": "r", "text": TEXT})
        await wait_for(lambda: len(got) == 2)
        after = server.stats()["raw"]
        sock = server.sockets[clients[0].sid or ""]
        # The message as the members got it (its timestamp is the server's).
        assert got[0] == got[1]
        message = got[0]
        assert {k: v for k, v in message.items() if k != "timestamp"} == {
            "room": "r", "text": TEXT, "from": sock.id, "name": None,
        }
        payload = encode_event("chat", message)
        # The broadcast went to 2 members, compressed once: its wire size is what
        # compress_once makes of it.
        compressed = compression.compress_once(payload, threshold=0, level=1)
        assert compressed is not None
        out_payload = after["bytesOutPayload"] - before["bytesOutPayload"]
        out_wire = after["bytesOutWire"] - before["bytesOutWire"]
        ack = len(encode_ack(3, {"delivered": 2}))
        assert out_payload == 2 * len(payload) + ack
        assert out_wire == 2 * len(compressed) + ack
        assert after["compressedMessagesOut"] - before["compressedMessagesOut"] == 2
        ratio = after["bandwidthSavedRatio"]
        expected = 1 - (after["bytesInWire"] + after["bytesOutWire"]) / (
            after["bytesIn"] + after["bytesOutPayload"]
        )
        assert ratio == pytest.approx(expected)
        for c in clients:
            await c.close()


async def test_latency_rates_process_and_top_rooms() -> None:
    server = create_app()
    server.config = server.config.replace(ping_interval=0.05, ping_timeout=1)
    async with running(server):
        started = asyncio.get_running_loop().time()  # before any socket this test pings
        client = Client(server.url, reconnect=False)
        await client.connect()
        await client.call("join", {"room": "big"})
        other = Client(server.url, reconnect=False)
        await other.connect()
        await other.call("join", {"room": "big"})
        await other.call("join", {"room": "small"})
        await wait_for(lambda: server.stats()["latency"]["samples"] >= 4)
        for _ in range(50):
            await client.call("echo", 1)
        stats = server.stats()
        # In milliseconds, and each round trip fits in the time this test has run (not a
        # guess at the machine's speed).
        span_ms = (asyncio.get_running_loop().time() - started) * 1000
        assert 0 < stats["latency"]["p50Ms"] <= stats["latency"]["p99Ms"] <= span_ms
        assert stats["rates"]["messagesInPerSecond"] > 0
        assert stats["rates"]["messagesInPerSecondLastMinute"] > 0
        assert stats["process"]["rssBytes"] > 10 * 1024 * 1024
        assert stats["topRooms"] == [{"room": "big", "members": 2}, {"room": "small", "members": 1}]
        assert stats["transmission"]["averageLatency"].endswith("ms")
        await client.close()
        await other.close()


async def test_prometheus_metrics_match_the_stats() -> None:
    async with running(create_app()) as server:
        client = Client(server.url, reconnect=False)
        await client.connect()
        for _ in range(7):
            await client.call("echo", TEXT)
        status, text = await fetch(server, "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        value = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families.values() for s in f.samples
        }
        raw = server.stats()["raw"]
        assert value[("smartsocket_connections", ())] == 1
        assert value[("smartsocket_messages_received_total", ())] == raw["messagesIn"] == 7
        assert value[("smartsocket_sent_bytes_total", (("kind", "wire"),))] == raw["bytesOutWire"]
        assert value[("smartsocket_received_bytes_total", (("kind", "payload"),))] == raw["bytesIn"]
        assert "smartsocket_heartbeat_rtt_seconds" in families
        assert families["smartsocket_heartbeat_rtt_seconds"].type == "histogram"
        assert "process_resident_memory_bytes" in families
        await client.close()


async def test_live_stream_pushes_stats_every_second() -> None:
    async with running(create_app()) as server:
        url = f"ws://127.0.0.1:{server.port}/smartsocket/live"
        async with websockets.connect(url, subprotocols=["smartsocket.v1"]) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())[0] == "$welcome"
            name, first = json.loads(await ws.recv())
            assert name == "stats" and first["connections"] == 0
            client = Client(server.url, reconnect=False)
            await client.connect()
            name, second = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert name == "stats"
            assert second["connections"] == 1  # the live reader itself is not counted
            # And on: pushed by the server's timer, not by the connect.
            name, third = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert name == "stats" and third["connections"] == 1
            await client.close()


async def test_stats_token_guards_metrics_and_live() -> None:
    async with running(SmartSocket(stats_token="t0k")) as server:
        with pytest.raises(urllib.error.HTTPError) as info:
            await fetch(server, "/metrics")
        assert info.value.code == 401
        info.value.close()
        assert (await fetch(server, "/metrics?token=t0k"))[0] == 200
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/smartsocket/live"):
                pass
        live = f"ws://127.0.0.1:{server.port}/smartsocket/live?token=t0k"
        async with websockets.connect(live) as ws:
            assert json.loads(await ws.recv())[0] == "$welcome"


async def test_metrics_disabled_costs_nothing_and_says_so() -> None:
    async with running(SmartSocket(enable_metrics=False)) as server:
        assert server._stats is None
        status, text = await fetch(server, "/metrics")
        assert status == 200 and "smartsocket_connections" in text
        assert "messages_received" not in text
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/smartsocket/live"):
                pass


def _documented_stats_keys() -> set[str]:
    """The key names the README's stats list promises (`name` at the start of a definition)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("The stats JSON keeps the seed's shape", 1)[1]
    section = section.split("`enable_metrics=False`", 1)[0]
    return set(re.findall(r"`([A-Za-z][A-Za-z0-9]*)`", section))


def _keys_and_nones(value: object, path: str = "") -> tuple[set[str], list[str]]:
    keys: set[str] = set()
    nones: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            inner, missing = _keys_and_nones(item, f"{path}.{key}")
            keys |= inner
            nones += missing
    elif value is None:
        nones.append(path)
    return keys, nones


@pytest.mark.parametrize("metrics", [True, False])
async def test_stats_keep_the_documented_shape_with_zeros(metrics: bool) -> None:
    """A fresh server, with metrics on or off: every documented key, no nulls."""
    documented = _documented_stats_keys()
    assert {"averageLatency", "p50Ms", "rateLimited", "topRooms"} <= documented
    async with running(SmartSocket(enable_metrics=metrics)) as server:
        status, text = await fetch(server, "/smartsocket/stats")
        stats = json.loads(text)
    assert status == 200
    keys, nones = _keys_and_nones(stats)
    assert documented <= keys, documented - keys
    assert nones == []
    assert stats["transmission"]["averageLatency"] == "0.0ms"
    assert stats["latency"]["p50Ms"] == 0 and stats["latency"]["samples"] == 0
    assert ("metrics" in stats) is not metrics


async def test_dashboard_page_is_served() -> None:
    async with running(SmartSocket()) as server:
        status, page = await fetch(server, "/smartsocket/dashboard")
        assert status == 200 and "/smartsocket/live" in page and "<svg" in page
        assert "http://" not in page.replace("http://www.w3.org", "")  # no external resources


def test_cli_stats_table_and_json_and_log_json() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartsocket", "serve", "--host", "127.0.0.1", "--port", "0",
         "--log-json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())  # --log-json: the ready line is JSON too
        url = ready["url"]
        assert ready["event"] == "listening" and ready["message"].startswith("listening on")
        table = subprocess.run(
            [sys.executable, "-m", "smartsocket", "stats", url], capture_output=True, text=True,
            timeout=20,
        )
        assert table.returncode == 0 and "connections" in table.stdout
        assert "bandwidth saved" in table.stdout
        raw = subprocess.run(
            [sys.executable, "-m", "smartsocket", "stats", "--json", url], capture_output=True,
            text=True, timeout=20,
        )
        assert json.loads(raw.stdout)["connections"] == 0
        bad = subprocess.run(
            [sys.executable, "-m", "smartsocket", "stats", "http://127.0.0.1:1"],
            capture_output=True, text=True, timeout=20,
        )
        assert bad.returncode == 1 and "cannot reach" in bad.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(e["message"] == "closed" for e in lines)
    assert all({"ts", "level", "logger", "message"} <= e.keys() for e in lines)


