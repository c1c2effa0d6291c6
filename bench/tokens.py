"""Token verification cost per connection: what a JWT adds to a connect, against an API key.

    .venv/bin/python -m bench.tokens [--repeat 5] [--number 5000] [--cpu 1]

For each key type (HS256 with a 32-byte secret, RS256 with a 2,048-bit key, ES256 on P-256,
and a JWKS-held RS256 key picked by kid) it times ``TokenVerifier.verify`` on a realistic
connection token (sub, iat, exp, aud, iss, a rooms claim) and reports the median over
``--repeat`` runs of ``--number`` verifies, in µs per verify. For scale it also times PyJWT's
own ``jwt.decode`` with the same key (what an app calling PyJWT directly would pay), the API
key check the server does today (``ApiKeys.identify``), and a failed verify (bad signature,
what an attacker's junk costs), and the same token verified again (a client reconnecting
with the token it had: the verdict cache skips the signature). Single process, one core
(``--cpu``, default 1, pins it). Times are this process's CPU time
(``time.process_time_ns``), so other work on a shared machine inflates them less than
wall-clock time would (caches and frequency still suffer: compare rows of one run).
bench/jwt_connects.py measures whole connects end to end.

The issue's target: 10,000 JWT-authenticated connects no slower than 1.2x as many with API
keys. A connect costs the server ~250 µs of CPU (bench/RESULTS.md: 2,000 handshakes ~0.5 s),
so the JWT verify may add up to ~50 µs per connect: the report prints each key type's share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from smartsocket.auth import JwksKeys, TokenError, TokenVerifier
from smartsocket.security import ApiKeys

CONNECT_CPU_US = 250.0  # bench/RESULTS.md: 2,000 handshakes cost the server ~0.5 s of CPU
SECRET = "bench-secret-bench-secret-0123456"


def timed(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """Median µs per call."""
    runs = []
    for _ in range(repeat):
        start = time.process_time_ns()
        for _ in range(number):
            fn()
        runs.append((time.process_time_ns() - start) / number / 1000)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--cpu", type=int, default=1, help="pin to this core (-1: no pin)")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    now = time.time()
    payload = {"sub": "user-4242", "iat": int(now), "exp": int(now) + 900, "aud": "chat-app",
               "iss": "https://login.example.com", "name": "Ann",
               "rooms": ["chat:lobby", "team:42:*", "user:4242"]}
    options: dict[str, Any] = {"audience": "chat-app", "issuer": "https://login.example.com"}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())

    def pem(key: Any) -> bytes:
        return bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    jwks_path = "/tmp/bench-tokens-jwks.json"
    with open(jwks_path, "w") as f:
        jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
        json.dump({"keys": [dict(jwk, kid="k1"), dict(jwk, kid="k0")]}, f)
    jwks = JwksKeys(jwks_path)
    jwks.load_file()

    # (name, key source of the verifier, token, the key PyJWT would be given, alg)
    cases: list[tuple[str, dict[str, Any], str, Any, str]] = [
        ("HS256", {"secret": SECRET}, jwt.encode(payload, SECRET, "HS256"), SECRET, "HS256"),
        ("RS256", {"public_key": pem(rsa_key)}, jwt.encode(payload, rsa_key, "RS256"),
         rsa_key.public_key(), "RS256"),
        ("ES256", {"public_key": pem(ec_key)}, jwt.encode(payload, ec_key, "ES256"),
         ec_key.public_key(), "ES256"),
        ("RS256 via JWKS kid", {"jwks": jwks},
         jwt.encode(payload, rsa_key, "RS256", headers={"kid": "k1"}), None, "RS256"),
    ]
    api_keys = ApiKeys("key-one-0123456789,key-two-0123456789")
    api_us = timed(lambda: api_keys.identify("key-two-0123456789"), args.number, args.repeat)
    print(f"{'what':<28} {'µs/verify':>10} {'PyJWT decode':>13} {'bad sig':>9} "
          f"{'share of a connect':>19}")
    print(f"{'API key (today)':<28} {api_us:>10.1f} {'':>13} {'':>9} "
          f"{api_us / CONNECT_CPU_US:>18.0%}")
    for name, source, token, key, alg in cases:
        # Distinct tokens (a storm of different users): no verdict cache.
        verifier = TokenVerifier(**source, **options, verified_cache_size=0)
        verifier.verify(token)
        ours = timed(lambda v=verifier, t=token: v.verify(t), args.number, args.repeat)
        pyjwt = "-"
        if key is not None:
            decode = jwt.PyJWT(options={"verify_aud": True})
            pyjwt_us = timed(lambda t=token, k=key, a=alg, d=decode: d.decode(
                t, k, algorithms=[a], audience="chat-app",
                issuer="https://login.example.com"), args.number, args.repeat)
            pyjwt = f"{pyjwt_us:.1f}"
        head, body, sig = token.split(".")
        bad = f"{head}.{body}.{'A' * len(sig)}"

        def refuse(v: TokenVerifier = verifier, t: str = bad) -> None:
            with contextlib.suppress(TokenError):
                v.verify(t)

        bad_us = timed(refuse, args.number, args.repeat)
        extra = (ours - api_us) / CONNECT_CPU_US
        print(f"{name:<28} {ours:>10.1f} {pyjwt:>13} {bad_us:>9.1f} "
              f"{ours / CONNECT_CPU_US:>18.0%}  (connects x{1 + extra:.2f})")
        cached = TokenVerifier(**source, **options)
        cached.verify(token)
        again = timed(lambda v=cached, t=token: v.verify(t), args.number, args.repeat)
        print(f"{'  same token again (cached)':<28} {again:>10.1f} {'':>13} {'':>9} "
              f"{again / CONNECT_CPU_US:>18.0%}")
    print(f"\n(A connect costs ~{CONNECT_CPU_US:.0f} µs of server CPU; target: JWT connects "
          "<= 1.2x API-key connects, i.e. <= ~50 µs added per verify.)")
    os.unlink(jwks_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
