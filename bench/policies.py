"""Room policy checks on join: the cost of ``RoomPolicies.may_join`` per call.

    .venv/bin/python -m bench.policies [--patterns 50] [--rooms 10000] [--repeat 5] [--cpu 1]

A policy set with ``--patterns`` patterns (exact names and prefixes of several lengths, as a
real app might have), joined by 10,000 distinct room names (``--rooms``: each connection its
own ``user:<id>`` room, plus ``chat:`` rooms by grant and unmatched ones). Reported in µs per
decision: the first join of each room name (pattern matching, the cache being filled), a
repeated join (the cache), the pattern match alone without the cache, and the rule kinds that
do more than a lookup (a grant in the token; a subscription token: a signature verify, see
bench/tokens.py). Times are this process's CPU time (``time.process_time_ns``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt

from smartsocket.auth import TokenVerifier
from smartsocket.policies import RoomPolicies, RoomPolicy
from smartsocket.room_patterns import PatternTable

SECRET = "bench-secret-bench-secret-0123456"


def per_call(fn: Callable[[], Any], calls: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.process_time_ns()
        fn()
        runs.append((time.process_time_ns() - start) / calls / 1000)
    return statistics.median(runs)


def build(patterns: int, verifier: TokenVerifier | None = None) -> RoomPolicies:
    rules = RoomPolicies(cache_size=100_000, verifier=verifier)
    rules.set("lobby", RoomPolicy())
    rules.set("admin", RoomPolicy(join="server"))
    rules.set("user:*", RoomPolicy(join="user"))
    rules.set("chat:*", RoomPolicy(join="grant"))
    rules.set("private:*", RoomPolicy(join="subscription"))
    for i in range(patterns - 5):  # filler: exact names and prefixes of varied lengths
        if i % 2:
            rules.set(f"room-{i}", RoomPolicy())
        else:
            rules.set(f"{'n' * (i % 17 + 1)}{i}:*", RoomPolicy(join="authenticated"))
    return rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patterns", type=int, default=50)
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=1, help="pin to this core (-1: no pin)")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    verifier = TokenVerifier(secret=SECRET)
    exp = time.time() + 3600
    n = args.rooms
    users = [verifier.verify(jwt.encode({"sub": str(i), "exp": exp,
                                         "rooms": ["chat:lobby", f"chat:team-{i % 100}",
                                                   "chat:help-*"]}, SECRET, "HS256"))
             for i in range(n)]
    user_rooms = [f"user:{i}" for i in range(n)]
    mixed = [(f"user:{i}", f"chat:team-{i % 100}", f"unmatched-{i}", "lobby")[i % 4]
             for i in range(n)]
    subscription = jwt.encode({"sub": "7", "room": "private:x", "exp": exp}, SECRET, "HS256")

    def first_joins(rooms: list[str]) -> Callable[[], None]:
        def run() -> None:
            rules = build(args.patterns, verifier)  # a fresh cache each run
            may_join = rules.may_join
            for claims, room in zip(users, rooms, strict=True):
                may_join(room, claims)
        return run

    rules = build(args.patterns, verifier)
    for claims, room in zip(users, mixed, strict=True):
        rules.may_join(room, claims)

    def repeated() -> None:
        may_join = rules.may_join
        for claims, room in zip(users, mixed, strict=True):
            may_join(room, claims)

    table: PatternTable[RoomPolicy] = PatternTable(build(args.patterns).patterns().items())

    def match_only() -> None:
        match = table.match
        for room in mixed:
            match(room)

    def grant_joins() -> None:  # fresh claims each run: the grant patterns are compiled again
        fresh = [verifier.verify(jwt.encode({"sub": str(i), "exp": exp,
                                              "rooms": ["chat:lobby", "chat:help-*"]},
                                             SECRET, "HS256")) for i in range(1000)]
        start = time.process_time_ns()
        for claims in fresh:
            rules.may_join("chat:lobby", claims)
        grant_ns.append(time.process_time_ns() - start)

    grant_ns: list[int] = []
    build_us = per_call(lambda: build(args.patterns, verifier), 1, args.repeat)
    assert rules.may_join("private:x", users[7], subscription).allowed
    rows = [
        (f"first join, {n:,} user:<id> rooms", per_call(first_joins(user_rooms), n,
                                                        args.repeat) - build_us / n),
        (f"first join, {n:,} mixed rooms", per_call(first_joins(mixed), n, args.repeat)
         - build_us / n),
        ("repeated join (cached match)", per_call(repeated, n, args.repeat)),
        (f"pattern match alone ({args.patterns} patterns)", per_call(match_only, n,
                                                                     args.repeat)),
    ]
    for _ in range(args.repeat):
        grant_joins()
    rows.append(("grant join, first of a connection", statistics.median(grant_ns) / 1000
                 / 1000))
    sub_us = per_call(lambda: [rules.may_join("private:x", users[7], subscription)
                               for _ in range(1000)], 1000, args.repeat)
    rows.append(("subscription-token join (HS256)", sub_us))
    print(f"{'what':<44} {'µs per decision':>16}")
    for name, value in rows:
        print(f"{name:<44} {value:>16.2f}")
    print(f"\n{n:,} connects each joining one room: "
          f"{rows[0][1] * n / 1000:.1f} ms of policy checks in all "
          f"(a connect costs ~250 µs: {rows[0][1] / 250:.2%} of it).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
