"""JWT connection and subscription tokens (smartsocket.auth): every way a token can be wrong
is refused with its code, and a right one is never refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jwt.warnings import InsecureKeyLengthWarning

from smartsocket.auth import (
    JwksKeys,
    TokenError,
    TokenErrorCode,
    TokenExpired,
    TokenInvalid,
    TokenNotYetValid,
    TokenVerifier,
)
from smartsocket.auth.jwks import KeySetError, parse_jwks
from smartsocket.errors import SmartSocketError
from smartsocket.security import AuthError
from tokenkit import (
    NOW,
    SECRET,
    FakeClock,
    claims,
    ec_key,
    forge,
    jwk,
    jwks,
    private_pem,
    public_pem,
    rsa_key,
    sign,
)

Code = TokenErrorCode


def hs(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(secret=SECRET, clock=FakeClock(), **kwargs)


def refused(verifier: TokenVerifier, token: str, code: Code) -> TokenError:
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.code == code, info.value
    return info.value


# --- valid tokens ---------------------------------------------------------------------------------


def test_hs256_valid_token_gives_typed_claims() -> None:
    token = sign(claims(name="Ann", rooms=["chat:*", "news"]))
    result = hs().verify(token)
    assert result.user == "ann"
    assert result.expires == NOW + 300 and result.issued_at == NOW - 10
    assert result.algorithm == "HS256" and result.key_id is None
    assert result.claims["name"] == "Ann"  # every claim readable by the app
    with pytest.raises(TypeError):
        result.claims["name"] = "Bob"  # type: ignore[index]
    assert result.seconds_left(NOW) == 300


def test_rs256_and_es256_with_a_public_key() -> None:
    for private in (rsa_key(), ec_key()):
        verifier = TokenVerifier(public_key=public_pem(private), clock=FakeClock())
        alg = "RS256" if private is rsa_key() else "ES256"
        assert verifier.verify(sign(claims(), private_pem(private), alg)).user == "ann"


def test_rsa_key_takes_pss_too() -> None:
    verifier = TokenVerifier(public_key=public_pem(rsa_key()), clock=FakeClock())
    assert verifier.verify(sign(claims(), private_pem(rsa_key()), "PS256")).algorithm == "PS256"


def test_errors_are_auth_errors_of_our_tree() -> None:
    error = refused(hs(), "not a token", Code.INVALID)
    assert isinstance(error, TokenInvalid) and isinstance(error, AuthError)
    assert isinstance(error, SmartSocketError)
    assert str(error).startswith("token_invalid: ")


# --- time claims (RFC 7519 4.1.4-4.1.6) -----------------------------------------------------------


def test_expired_token() -> None:
    error = refused(hs(), sign(claims(exp=NOW - 60)), Code.EXPIRED)
    assert isinstance(error, TokenExpired)


def test_expiry_leeway_both_sides() -> None:
    clock = FakeClock()
    verifier = TokenVerifier(secret=SECRET, leeway=5, clock=clock)
    token = sign(claims(exp=NOW))
    verifier.verify(token)  # 0 s past exp: inside the leeway
    clock.advance(4.9)
    verifier.verify(token)
    clock.advance(0.1)  # now == exp + leeway: expired
    refused(verifier, token, Code.EXPIRED)


def test_no_leeway_exp_is_exclusive() -> None:
    verifier = hs(leeway=0)
    refused(verifier, sign(claims(exp=NOW)), Code.EXPIRED)
    verifier.verify(sign(claims(exp=NOW + 0.5)))


def test_not_yet_valid_and_leeway() -> None:
    verifier = hs(leeway=5)
    error = refused(verifier, sign(claims(nbf=NOW + 60)), Code.NOT_YET_VALID)
    assert isinstance(error, TokenNotYetValid)
    verifier.verify(sign(claims(nbf=NOW + 5)))  # a clock 5 s behind the issuer's is fine
    refused(verifier, sign(claims(nbf=NOW + 5.5)), Code.NOT_YET_VALID)


def test_issued_in_the_future() -> None:
    refused(hs(), sign(claims(iat=NOW + 600)), Code.NOT_YET_VALID)


def test_exp_is_required_by_default() -> None:
    refused(hs(), sign(claims(exp=None)), Code.INVALID)
    assert hs(require_exp=False).verify(sign(claims(exp=None))).expires is None


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_time_claims_must_be_numbers(claim: str) -> None:
    refused(hs(), sign(claims(**{claim: "soon"})), Code.INVALID)
    refused(hs(), sign(claims(**{claim: True})), Code.INVALID)


# --- signatures and algorithms --------------------------------------------------------------------


def test_wrong_secret() -> None:
    refused(hs(), sign(claims(), "another-secret-another-secret-012"), Code.INVALID)


def test_tampered_payload() -> None:
    head, _, sig = sign(claims()).split(".")
    other = sign(claims(sub="root")).split(".")[1]
    refused(hs(), f"{head}.{other}.{sig}", Code.INVALID)


def test_alg_none_is_refused() -> None:
    for alg in ("none", "None", "NONE", ""):
        token = forge({"alg": alg, "typ": "JWT"}, claims())
        refused(hs(), token, Code.ALGORITHM)
        refused(TokenVerifier(public_key=public_pem(rsa_key()), clock=FakeClock()), token,
                Code.ALGORITHM)


def test_missing_alg() -> None:
    refused(hs(), forge({"typ": "JWT"}, claims()), Code.ALGORITHM)


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    # The key-confusion attack: the attacker knows the public key and uses it as an HMAC secret.
    pem = public_pem(rsa_key())
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(), hmac_key=pem)
    verifier = TokenVerifier(public_key=pem, clock=FakeClock())
    refused(verifier, token, Code.ALGORITHM)
    # The same with the EC key and with a JWKS.
    ec_pem = public_pem(ec_key())
    token = forge({"alg": "HS256"}, claims(), hmac_key=ec_pem)
    refused(TokenVerifier(public_key=ec_pem, clock=FakeClock()), token, Code.ALGORITHM)


def test_rs256_token_refused_by_an_hmac_verifier() -> None:
    refused(hs(), sign(claims(), private_pem(rsa_key()), "RS256"), Code.ALGORITHM)


def test_es_curve_binds_the_algorithm() -> None:
    p384 = ec_key("b", "p384")
    verifier = TokenVerifier(public_key=public_pem(p384), clock=FakeClock())
    assert verifier.verify(sign(claims(), private_pem(p384), "ES384")).algorithm == "ES384"
    # A P-256 signature presented as ES256 against a P-384 key: not an algorithm of this key.
    refused(verifier, sign(claims(), private_pem(ec_key()), "ES256"), Code.ALGORITHM)


def test_hs384_needs_a_48_byte_secret() -> None:
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT signs, warning: we refuse
        token = sign(claims(), SECRET, "HS384")
    refused(hs(), token, Code.ALGORITHM)
    long_secret = SECRET * 2
    verifier = TokenVerifier(secret=long_secret, clock=FakeClock())
    assert verifier.verify(sign(claims(), long_secret, "HS512")).algorithm == "HS512"
    assert verifier.verify(sign(claims(), long_secret, "HS384")).algorithm == "HS384"
    assert verifier.verify(sign(claims(), long_secret, "HS256")).algorithm == "HS256"
    refused(verifier, sign(claims(), SECRET * 3, "HS512"), Code.INVALID)  # another secret


def test_wrong_rsa_key() -> None:
    verifier = TokenVerifier(public_key=public_pem(rsa_key("a")), clock=FakeClock())
    refused(verifier, sign(claims(), private_pem(rsa_key("b")), "RS256"), Code.INVALID)


# --- audience and issuer --------------------------------------------------------------------------


def test_audience() -> None:
    verifier = hs(audience="chat-app")
    verifier.verify(sign(claims(aud="chat-app")))
    verifier.verify(sign(claims(aud=["billing", "chat-app"])))
    refused(verifier, sign(claims(aud="billing")), Code.AUDIENCE)
    refused(verifier, sign(claims(aud=["billing"])), Code.AUDIENCE)
    refused(verifier, sign(claims()), Code.AUDIENCE)  # configured: the claim is required
    refused(verifier, sign(claims(aud=7)), Code.AUDIENCE)


def test_several_audiences_configured() -> None:
    verifier = hs(audience=["a", "b"])
    verifier.verify(sign(claims(aud="b")))


def test_token_with_audience_but_none_configured() -> None:
    refused(hs(), sign(claims(aud="someone-else")), Code.AUDIENCE)


def test_issuer() -> None:
    verifier = hs(issuer="https://login.example.com")
    verifier.verify(sign(claims(iss="https://login.example.com")))
    refused(verifier, sign(claims(iss="https://evil.example.com")), Code.ISSUER)
    refused(verifier, sign(claims()), Code.ISSUER)


# --- claims ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "", 42])
def test_sub_is_required(sub: object) -> None:
    refused(hs(), sign(claims(sub=sub)), Code.INVALID)


def test_room_grants_list_and_object() -> None:
    listed = hs().verify(sign(claims(rooms=["chat:*", "news"]))).grants
    assert listed.allows("chat:lobby", "join") and listed.allows("news", "join")
    assert not listed.allows("chat:lobby", "publish") and not listed.allows("admin", "join")
    mapped = hs().verify(sign(claims(rooms={"chat:*": ["join", "publish"],
                                            "chat:ro": ["join"]}))).grants
    assert mapped.allows("chat:x", "publish")
    assert mapped.allows("chat:ro", "join") and not mapped.allows("chat:ro", "publish")
    assert not hs().verify(sign(claims())).grants


def test_rooms_claim_name_is_configurable() -> None:
    grants = hs(rooms_claim="channels").verify(sign(claims(channels=["news"]))).grants
    assert grants.allows("news", "join")


def test_room_grants_of_names_only_and_mixed_lists() -> None:
    # A list of names takes a one-pass path; a prefix anywhere, the general one: same answers.
    names = hs().verify(sign(claims(rooms=["news", "chat:lobby", "news"]))).grants
    assert names.allows("news", "join") and names.allows("chat:lobby", "join")
    assert not names.allows("chat:lobbyx", "join") and not names.allows("news", "publish")
    assert dict(names.patterns()) == {"news": frozenset({"join"}),
                                      "chat:lobby": frozenset({"join"})}
    mixed = hs().verify(sign(claims(rooms=["news", "chat:*", "*"]))).grants
    assert mixed.allows("news", "join") and mixed.allows("chat:x", "join")
    assert mixed.allows("other", "join")
    assert list(mixed.patterns()) == ["news", "chat:*", "*"]


@pytest.mark.parametrize("rooms", [
    "chat:*", [1], ["a*b"], {"x": "join"}, {"x": ["own"]}, [""], ["news", 1], ["news", "a\x00b"],
    ["ok\u202e"], ["news", "chat:*", "**"], ["news", ["x"]], [None],
])
def test_malformed_room_grants(rooms: object) -> None:
    refused(hs(), sign(claims(rooms=rooms)), Code.INVALID)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_signatures_of_every_algorithm(alg: str) -> None:
    # RSA verifies straight through cryptography, padding and hash built once per algorithm.
    key = rsa_key()
    verifier = TokenVerifier(public_key=public_pem(key), clock=FakeClock())
    token = sign(claims(), private_pem(key), alg)
    assert verifier.verify(token).algorithm == alg
    head, body, sig = token.split(".")
    refused(verifier, f"{head}.{body}.{sig[:-4]}AAAA", Code.INVALID)  # a changed signature
    other = "RS256" if alg != "RS256" else "RS384"  # the header names another hash
    refused(verifier, sign(claims(), private_pem(key), other).split(".")[0]
            + f".{body}.{sig}", Code.INVALID)


# --- malformed tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [
    "", "a.b", "a.b.c.d", "a.b.c.d.e", "!!!.e30.", "e30.e30.sig=", "Zm9v.e30.", "W10.e30.",
    "é.e30.", "e30.e30.a", "eyJhbGciOiJIUzI1NiJ9.e30+.abc", "eyJhbGciOiJIUzI1NiJ9.e30/.abc",
    "eyJhbGciOiJIUzI1NiJ9.e30=.abc", "eyJhbGciOiJIUzI1NiJ9.e30.a b",
])
def test_malformed(token: str) -> None:
    with pytest.raises(TokenError) as info:
        hs().verify(token)
    assert info.value.code in (Code.INVALID, Code.ALGORITHM)


def test_standard_base64_alphabet_refused() -> None:
    # The same bytes in base64 with "+" or "/" instead of base64url's "-" and "_": refused,
    # so one token has one spelling.
    token = sign(claims(note="\u00ff\u00ff\u00ff?>>"))
    head, body, sig = token.split(".")
    assert "-" in body + sig or "_" in body + sig
    hs().verify(token)
    table = str.maketrans("-_", "+/")
    swapped = f"{head}.{body.translate(table)}.{sig.translate(table)}"
    refused(hs(), swapped, Code.INVALID)


def test_oversized_token_refused_before_any_work() -> None:
    refused(hs(), "a" * 9000, Code.INVALID)


def test_payload_must_be_an_object() -> None:
    token = forge({"alg": "HS256"}, {}, hmac_key=SECRET.encode())
    head, _, _ = token.split(".")
    import base64
    import hashlib
    import hmac

    body = base64.urlsafe_b64encode(b"[1,2]").rstrip(b"=").decode()
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    refused(hs(), token, Code.INVALID)


def test_crit_extension_refused() -> None:
    token = forge({"alg": "HS256", "crit": ["exp"], "exp": 1}, claims(),
                  hmac_key=SECRET.encode())
    refused(hs(), token, Code.INVALID)


# --- kinds: connection vs subscription ------------------------------------------------------------


def test_subscription_token() -> None:
    verifier = hs()
    token = sign(claims(room="secret-room", exp=NOW + 30))
    sub = verifier.verify_subscription(token, "secret-room", "ann")
    assert (sub.user, sub.room, sub.expires) == ("ann", "secret-room", NOW + 30)
    for room, user, code in [("other-room", "ann", Code.WRONG_ROOM),
                             ("secret-room", "bob", Code.WRONG_ROOM),
                             ("secret-room", None, Code.WRONG_ROOM)]:
        with pytest.raises(TokenError) as info:
            verifier.verify_subscription(token, room, user)
        assert info.value.code == code


def test_subscription_token_for_anonymous_connection() -> None:
    token = sign(claims(sub=None, room="lobby"))
    assert hs().verify_subscription(token, "lobby", None).user is None


def test_subscription_token_cannot_connect_and_the_reverse() -> None:
    refused(hs(), sign(claims(room="r")), Code.WRONG_KIND)
    with pytest.raises(TokenError) as info:
        hs().verify_subscription(sign(claims()), "r", "ann")
    assert info.value.code == Code.WRONG_KIND


def test_subscription_token_expiry() -> None:
    with pytest.raises(TokenExpired):
        hs().verify_subscription(sign(claims(room="r", exp=NOW - 10)), "r", "ann")


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["short", "x" * 31])
def test_short_secret_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        TokenVerifier(secret=secret)


def test_public_key_as_secret_refused() -> None:
    with pytest.raises(ValueError, match="not a usable secret"):
        TokenVerifier(secret=public_pem(rsa_key()))


def test_private_key_refused_as_public_key() -> None:
    with pytest.raises(ValueError, match="private key"):
        TokenVerifier(public_key=private_pem(rsa_key()))


def test_small_rsa_key_refused() -> None:
    with pytest.raises(ValueError, match="2048"):
        TokenVerifier(public_key=public_pem(rsa_key("small", 1024)))


def test_garbage_public_key() -> None:
    with pytest.raises(ValueError, match="PEM"):
        TokenVerifier(public_key=b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_exactly_one_key_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier()
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(secret=SECRET, public_key=public_pem(rsa_key()))


def test_from_options(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(rsa_key()))
    verifier = TokenVerifier.from_options(jwt_public_key=str(pem), jwt_audience="a, b",
                                          jwt_issuer="me", jwt_leeway=1, clock=FakeClock())
    token = sign(claims(aud="b", iss="me"), private_pem(rsa_key()), "RS256")
    assert verifier.verify(token).user == "ann"
    with pytest.raises(ValueError, match="cannot read"):
        TokenVerifier.from_options(jwt_public_key=str(tmp_path / "missing.pem"))


# --- JWKS -----------------------------------------------------------------------------------------


def test_parse_jwks_skips_unusable_keys(caplog: pytest.LogCaptureFixture) -> None:
    good = jwk(rsa_key(), "good")
    doc = jwks(
        good,
        {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},  # a shared secret in a public set
        dict(jwk(rsa_key("b"), "priv"), d="AQAB"),  # a private key
        jwk(rsa_key("c"), "enc", use="enc"),
        jwk(ec_key(), "wrong-alg", alg="RS256"),
        {"kty": "OKP", "kid": "okp"},
        "not an object",
        dict(good, kid="good"),  # duplicate
    )
    keys = parse_jwks(doc, "test")
    assert list(keys) == ["good"]
    assert "symmetric" in caplog.text and "private key" in caplog.text


@pytest.mark.parametrize("doc", [b"nope", b"[]", b'{"keys": {}}', b'{"keys": []}'])
def test_parse_jwks_refuses_sets_without_keys(doc: bytes) -> None:
    with pytest.raises(KeySetError):
        parse_jwks(doc, "test")


def test_jwk_alg_restricts_the_key() -> None:
    keys = parse_jwks(jwks(jwk(rsa_key(), "k", alg="PS256")), "t")
    assert keys["k"].algorithms == frozenset({"PS256"})


def jwks_verifier(source: str, clock: FakeClock, **kwargs: Any) -> TokenVerifier:
    keys = JwksKeys(source, monotonic=clock, **kwargs)
    if not keys.url:
        assert keys.load_file()
    return TokenVerifier(jwks=keys, clock=clock)


def rs(kid: str | None, key: str = "a", **claim: Any) -> str:
    return sign(claims(**claim), rsa_key(key), "RS256", kid=kid)


def test_jwks_file_token_by_kid(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(rsa_key("a"), "k1"), jwk(ec_key(), "k2")))
    verifier = jwks_verifier(str(path), FakeClock())
    assert verifier.verify(rs("k1")).key_id == "k1"
    es = sign(claims(), private_pem(ec_key()), "ES256", kid="k2")
    assert verifier.verify(es).algorithm == "ES256"
    # The kid picks the key; the key's type binds the algorithm.
    refused(verifier, sign(claims(), private_pem(rsa_key("a")), "RS256", kid="k2"),
            Code.ALGORITHM)
    refused(verifier, rs("k2"), Code.ALGORITHM)
    refused(verifier, rs(None), Code.UNKNOWN_KEY)  # no kid, several keys
    refused(verifier, forge({"alg": "HS256", "kid": "k1"}, claims(),
                            hmac_key=json.dumps(jwk(rsa_key("a"), "k1")).encode()),
            Code.ALGORITHM)


def test_jwks_single_key_takes_tokens_without_kid(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(rsa_key("a"), "only")))
    assert jwks_verifier(str(path), FakeClock()).verify(rs(None)).user == "ann"


async def test_jwks_file_rotation_on_disk(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(rsa_key("a"), "k1")))
    verifier = jwks_verifier(str(path), clock)
    assert (await verifier.verify_async(rs("k1"))).user == "ann"
    # The issuer rotates: k2 joins the set (k1 is still published for tokens in flight).
    path.write_bytes(jwks(jwk(rsa_key("a"), "k1"), jwk(rsa_key("b"), "k2")))
    refused(verifier, rs("k2", "b"), Code.UNKNOWN_KEY)  # sync: never does I/O
    # Loaded at the start of this very second: the refresh is rate-limited.
    with pytest.raises(TokenError) as info:
        await verifier.verify_async(rs("k2", "b"))
    assert info.value.code == Code.UNKNOWN_KEY
    clock.advance(30)
    assert (await verifier.verify_async(rs("k2", "b"))).key_id == "k2"
    # k1 is withdrawn; after max_age (600 s) the set is reloaded and k1 stops verifying.
    path.write_bytes(jwks(jwk(rsa_key("b"), "k2")))
    clock.advance(100)
    assert (await verifier.verify_async(rs("k1"))).key_id == "k1"  # cached, not stale yet
    clock.advance(600)
    # Stale: this verify is served from the cache (a slow key server never holds up a
    # connect) and starts the reload in the background.
    assert (await verifier.verify_async(rs("k1", exp=NOW + 10_000))).key_id == "k1"
    assert verifier.jwks is not None
    await verifier.jwks.wait_for_refresh()
    with pytest.raises(TokenError) as info:
        await verifier.verify_async(rs("k1"))
    assert info.value.code == Code.UNKNOWN_KEY


async def test_jwks_file_broken_on_disk_keeps_the_old_keys(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(rsa_key("a"), "k1")))
    verifier = jwks_verifier(str(path), clock)
    path.write_text("{half a file")
    clock.advance(1000)
    assert (await verifier.verify_async(rs("k1", exp=NOW + 10_000))).user == "ann"
    path.unlink()
    clock.advance(1000)
    assert (await verifier.verify_async(rs("k1", exp=NOW + 10_000))).user == "ann"


def test_jwks_file_unusable_at_start(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    with pytest.raises(ValueError, match="no usable signing key"):
        TokenVerifier.from_options(jwt_jwks=str(path))
    with pytest.raises(ValueError, match="No such file or directory"):  # the cause, not "see log"
        TokenVerifier.from_options(jwt_jwks=str(tmp_path / "missing.json"))


class JwksServer:
    """A tiny HTTP server on 127.0.0.1 serving ``body`` at /jwks.json, counting GETs."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.hits = 0
        self.delay = 0.0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            reason = b"OK" if self.status == 200 else b"Error"
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (self.status, reason, len(self.body), self.body))
            await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.close()


async def test_jwks_url_rotation(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"))
    verifier = TokenVerifier.from_options(jwt_jwks=jwks_server.url, clock=clock,
                                          monotonic=clock)
    with pytest.raises(TokenError) as info:  # not started: no keys yet
        verifier.verify(rs("k1"))
    assert info.value.code == Code.KEYS_UNAVAILABLE
    await verifier.start()
    assert jwks_server.hits == 1
    assert verifier.verify(rs("k1")).user == "ann"
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"), jwk(rsa_key("b"), "k2"))
    clock.advance(31)
    assert (await verifier.verify_async(rs("k2", "b"))).key_id == "k2"
    assert jwks_server.hits == 2
    assert verifier.verify(rs("k2", "b")).key_id == "k2"  # now cached: sync works too


async def test_jwks_url_unknown_kids_cannot_make_it_fetch_in_a_loop(
    jwks_server: JwksServer,
) -> None:
    clock = FakeClock()
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"))
    verifier = TokenVerifier.from_options(jwt_jwks=jwks_server.url, clock=clock,
                                          monotonic=clock)
    await verifier.start()
    for i in range(50):
        with pytest.raises(TokenError):
            await verifier.verify_async(rs(f"made-up-{i}"))
    assert jwks_server.hits == 1  # all within min_refresh_interval of the start
    clock.advance(30)
    for i in range(50):
        with pytest.raises(TokenError):
            await verifier.verify_async(rs(f"made-up-again-{i}"))
    assert jwks_server.hits == 2
    # Tokens that no key set could verify (alg none, HS*) fetch nothing at all.
    clock.advance(30)
    for token in (forge({"alg": "none", "kid": "x"}, claims()),
                  forge({"alg": "HS256", "kid": "x"}, claims(), hmac_key=b"k" * 32)):
        with pytest.raises(TokenError):
            await verifier.verify_async(token)
    assert jwks_server.hits == 2


async def test_jwks_url_concurrent_unknown_kids_share_one_fetch(
    jwks_server: JwksServer,
) -> None:
    clock = FakeClock()
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"))
    verifier = TokenVerifier.from_options(jwt_jwks=jwks_server.url, clock=clock,
                                          monotonic=clock)
    await verifier.start()
    jwks_server.body = jwks(jwk(rsa_key("b"), "k2"))
    jwks_server.delay = 0.05
    clock.advance(60)
    results = await asyncio.gather(*(verifier.verify_async(rs("k2", "b")) for _ in range(20)))
    assert {r.key_id for r in results} == {"k2"}
    assert jwks_server.hits == 2


async def test_jwks_url_failure_keeps_the_keys(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"))
    verifier = TokenVerifier.from_options(jwt_jwks=jwks_server.url, clock=clock,
                                          monotonic=clock)
    await verifier.start()
    jwks_server.status = 500
    clock.advance(700)  # stale: a refresh is attempted, fails, the keys stay
    assert (await verifier.verify_async(rs("k1", exp=NOW + 10_000))).user == "ann"
    assert verifier.jwks is not None
    await verifier.jwks.wait_for_refresh()
    assert jwks_server.hits == 2
    assert (await verifier.verify_async(rs("k1", exp=NOW + 10_000))).user == "ann"
    jwks_server.status = 200
    jwks_server.body = b"<html>not json</html>"
    clock.advance(700)
    assert (await verifier.verify_async(rs("k1", exp=NOW + 10_000))).user == "ann"


async def test_jwks_url_down_at_start(jwks_server: JwksServer,
                                      caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    jwks_server.status = 503
    verifier = TokenVerifier.from_options(jwt_jwks=jwks_server.url, clock=clock,
                                          monotonic=clock)
    await verifier.start()
    with pytest.raises(TokenError) as info:
        await verifier.verify_async(rs("k1"))
    assert info.value.code == Code.KEYS_UNAVAILABLE
    assert "JWKS refresh failed" in caplog.text
    jwks_server.status = 200
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"))
    clock.advance(30)
    assert (await verifier.verify_async(rs("k1"))).user == "ann"


def test_jwks_oversized_response_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartsocket.auth import jwks as jwks_module

    class Response:
        status = 200

        def read(self, n: int) -> bytes:
            return b" " * n

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *args: object) -> None:
            return None

    monkeypatch.setattr(jwks_module._OPENER, "open", lambda *a, **k: Response())
    with pytest.raises(KeySetError, match="larger than"):
        jwks_module.fetch_url("https://keys.example.com/jwks", 1.0, max_bytes=100)


def test_plain_http_jwks_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    JwksKeys("http://auth.internal/jwks.json")
    assert "plain http" in caplog.text
    caplog.clear()
    JwksKeys("http://127.0.0.1:9/jwks.json")
    assert "plain http" not in caplog.text


def test_grants_most_specific_pattern_wins() -> None:
    grants = hs().verify(sign(claims(rooms={"chat:*": ["join"], "chat:vip:*": ["publish"],
                                            "chat:vip:x": ["join", "publish"]}))).grants
    assert grants.allows("chat:a", "join") and not grants.allows("chat:a", "publish")
    assert grants.allows("chat:vip:a", "publish") and not grants.allows("chat:vip:a", "join")
    assert grants.allows("chat:vip:x", "join") and grants.allows("chat:vip:x", "publish")
    assert dict(grants.patterns())["chat:*"] == {"join"}


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartsocket.auth import jws
    from smartsocket.errors import MissingDependency

    monkeypatch.setattr(jws, "AVAILABLE", False)
    with pytest.raises(MissingDependency, match=r"smartsocket\[jwt\]"):
        TokenVerifier(secret=SECRET)


def test_public_names() -> None:
    import smartsocket.auth as auth

    assert auth.__all__ == sorted(auth.__all__)
    assert all(hasattr(auth, name) for name in auth.__all__)


def test_a_verified_signature_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartsocket.auth import jws

    calls: list[str] = []
    original = jws.VerifyKey.verify

    def counting(self: jws.VerifyKey, alg: str, signing_input: bytes, sig: bytes) -> bool:
        calls.append(alg)
        return original(self, alg, signing_input, sig)

    monkeypatch.setattr(jws.VerifyKey, "verify", counting)
    clock = FakeClock()
    verifier = TokenVerifier(public_key=public_pem(rsa_key("a")), clock=clock)
    token = rs(None, exp=NOW + 60)
    for _ in range(3):
        assert verifier.verify(token).user == "ann"
    assert len(calls) == 1  # a reconnect with the same token: no second RSA verify
    clock.advance(120)
    refused(verifier, token, Code.EXPIRED)  # the claims are checked every time
    head, body, sig = token.split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    for _ in range(2):
        refused(verifier, forged, Code.INVALID)
    assert len(calls) == 3  # refusals are never cached
    uncached = TokenVerifier(public_key=public_pem(rsa_key("a")), clock=FakeClock(),
                             verified_cache_size=0)
    uncached.verify(token)
    uncached.verify(token)
    assert len(calls) == 5


async def test_a_key_replaced_under_the_same_kid_drops_cached_verdicts(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks(jwk(rsa_key("a"), "k1")))
    verifier = jwks_verifier(str(path), clock)
    token = rs("k1", exp=NOW + 10_000)
    assert verifier.verify(token).user == "ann"  # verified, and cached
    path.write_bytes(jwks(jwk(rsa_key("b"), "k1")))  # k1 now means another key
    clock.advance(700)
    await verifier.verify_async(token)  # stale: served, reload started
    assert verifier.jwks is not None
    await verifier.jwks.wait_for_refresh()
    refused(verifier, token, Code.INVALID)
    assert verifier.verify(rs("k1", "b", exp=NOW + 10_000)).user == "ann"


def test_jwks_redirect_from_https_to_http_refused() -> None:
    import urllib.request

    from smartsocket.auth.jwks import _NoDowngrade

    handler = _NoDowngrade()
    request = urllib.request.Request("https://login.example.com/jwks.json")
    with pytest.raises(KeySetError, match="not https"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://evil.example.com/k")
    followed = handler.redirect_request(request, None, 302, "Found", {},
                                        "https://cdn.example.com/jwks.json")
    assert followed is not None and followed.full_url == "https://cdn.example.com/jwks.json"


def test_hmac_signatures_are_checked_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # An HMAC costs no more than the verified-signature cache's own hash: no cache for it.
    from smartsocket.auth import jws

    calls: list[str] = []
    original = jws.VerifyKey.verify

    def counting(self: jws.VerifyKey, alg: str, signing_input: bytes, sig: bytes) -> bool:
        calls.append(alg)
        return original(self, alg, signing_input, sig)

    monkeypatch.setattr(jws.VerifyKey, "verify", counting)
    verifier = hs()
    token = sign(claims())
    for _ in range(3):
        assert verifier.verify(token).user == "ann"
    assert calls == ["HS256"] * 3
    head, body, sig = token.split(".")
    refused(verifier, f"{head}.{body}.{sig[:-4]}AAAA", Code.INVALID)


async def test_jwks_refresh_interval_is_an_option(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    jwks_server.body = jwks(jwk(rsa_key("a"), "k1"))
    verifier = TokenVerifier.from_options(jwt_jwks=jwks_server.url, clock=clock,
                                          monotonic=clock, jwt_jwks_refresh_interval=5.0)
    await verifier.start()
    clock.advance(4.9)  # just under: an unknown kid fetches nothing
    with pytest.raises(TokenError):
        await verifier.verify_async(rs("made-up-1"))
    assert jwks_server.hits == 1
    clock.advance(0.1)  # at the interval: one fetch, then none again until the next
    for i in range(2, 5):
        with pytest.raises(TokenError):
            await verifier.verify_async(rs(f"made-up-{i}"))
    assert jwks_server.hits == 2
