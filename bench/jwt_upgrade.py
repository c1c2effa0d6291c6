"""In-process cost of the upgrade check: what the server does with a connect's credentials.

    .venv/bin/python -m bench.jwt_upgrade [--number 5000] [--repeat 5] [--modes apikey,hs256,rs256]

For each mode it builds the server's ``Admission`` (the same options ``bench.jwt_connects``
gives its servers) and runs, per connect, what happens between the request line and the 101:
the query string parsed like the transport does (``?token=...``) and ``check_upgrade()``, which
for a JWT verifies it (signature and claims, a ``TokenClaims`` built). Every connect carries
a distinct token (a storm of different users: no verified-signature cache hits). Prints the
median CPU µs per connect over ``--repeat`` runs (``time.process_time_ns``).

Wall time on a shared machine is noisy; instruction counts are not. For a stable figure:

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.jwt_upgrade --modes hs256 --number N --repeat 1

and again with ``--dry`` (everything but ``check_upgrade``: making the tokens, parsing the
queries): the difference in ``Collected`` over N is the check's instructions per connect. (RS256
keys are random, so count HS256 and API keys this way.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from smartsocket.config import Config
from smartsocket.server.admission import Admission
from smartsocket.server.tokens import TokenSessions, verifier_for
from smartsocket.transport import HandshakeRequest, HttpResponse

SECRET = "bench-secret-bench-secret-0123456"
API_KEY = "bench-api-key-0123456789"
NOW = 1_800_000_000
HEADERS = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def tokens(mode: str, count: int, key: Any, run: int) -> list[str]:
    import jwt

    if mode == "apikey":
        return [API_KEY] * count
    alg = {"hs256": "HS256", "rs256": "RS256"}[mode]
    return [jwt.encode({"sub": f"user-{run}-{i}", "exp": NOW + 3600, "iat": NOW,
                        "rooms": ["chat:lobby"]}, key, alg) for i in range(count)]


def admission(mode: str, keyfile: str | None) -> Admission:
    options: dict[str, Any] = {}
    if mode == "apikey":
        options["api_keys"] = API_KEY
    elif mode == "hs256":
        options["jwt_secret"] = SECRET
    else:
        options["jwt_public_key"] = keyfile
    config = Config(**options)
    sessions = TokenSessions(verifier_for(config, lambda: float(NOW)))
    return Admission(config, spawn=lambda coro: None, admit=lambda socket: None,
                     tokens=sessions)


def run(check: Callable[[HandshakeRequest], Any], queries: list[str]) -> None:
    for query in queries:
        outcome = check(HandshakeRequest("/", parse_qs(query), HEADERS))
        if isinstance(outcome, HttpResponse) or not outcome[0]:
            raise SystemExit(f"refused: {outcome}")


def _accept(request: HandshakeRequest) -> tuple[bool, None]:
    return True, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modes", default="apikey,hs256,rs256")
    parser.add_argument("--dry", action="store_true",
                        help="skip check_upgrade (the baseline of an instruction count)")
    args = parser.parse_args(argv)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = None
    keyfile = f"/tmp/bench-jwt-upgrade-{os.getpid()}.pem"
    results: dict[str, float] = {}
    try:
        for mode in args.modes.split(","):
            key: Any = SECRET
            if mode == "rs256":
                rsa_key = rsa_key or rsa.generate_private_key(public_exponent=65537,
                                                              key_size=2048)
                key = rsa_key
                with open(keyfile, "wb") as f:
                    f.write(rsa_key.public_key().public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo))
            check = admission(mode, keyfile).check_upgrade
            if args.dry:
                check = _accept
            runs = []
            for r in range(args.repeat):
                queries = ["token=" + t for t in tokens(mode, args.number, key, r)]
                if r == 0 and args.number:
                    run(check, queries[:1])  # warm: imports, caches of the first header
                start = time.process_time_ns()
                run(check, queries)
                runs.append((time.process_time_ns() - start) / max(args.number, 1) / 1000)
            results[mode] = statistics.median(runs)
            print(f"{mode:<8} {results[mode]:6.1f} µs per upgrade check", flush=True)
    finally:
        if os.path.exists(keyfile):
            os.unlink(keyfile)
    if "apikey" in results and args.number:
        base = results["apikey"]
        print("vs API keys: " + ", ".join(f"{m} +{v - base:.1f} µs" for m, v in results.items()
                                          if m != "apikey"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
