"""JWS compact tokens: parsing, keys and signature checks (RFC 7515, 7517, 7518).

The only module that imports PyJWT and ``cryptography`` (like ``transport/`` keeps picows):
PyJWT reads JWKs and checks secrets, ``cryptography`` verifies RSA signatures (one call, the
padding and hash built once per key), hashlib's OpenSSL HMAC the HS* ones, PyJWT's algorithm
objects the ES* ones; the compact form is split and checked here, strictly, before any
signature work. Keys are prepared once when loaded: PyJWT's ``decode()`` prepares the key
again on every call (for an HMAC secret that means trying to parse it as JSON, PEM and DER),
which would be most of the cost of a verify.

Each key is bound to the algorithms its type allows (RFC 8725 3.1): an HMAC secret to HS*, an
RSA key to RS*/PS*, an EC key to the one ES* of its curve. A token's ``alg`` is checked
against that set, so ``none`` is never accepted and an HS256 token "signed" with an RSA public
key as the secret finds no key that verifies it (the classic key-confusion attack).
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from smartsocket.auth.errors import TokenErrorCode, TokenInvalid
from smartsocket.errors import MissingDependency

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from jwt.algorithms import Algorithm, ECAlgorithm, RSAAlgorithm, get_default_algorithms
    from jwt.exceptions import InvalidKeyError
except ImportError:  # pragma: no cover - the jwt extra is not installed
    AVAILABLE = False
else:
    AVAILABLE = True

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# RFC 7518 3.4: ES256 is ECDSA on P-256 with SHA-256, and so on: one algorithm per curve.
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# RFC 7518 3.2: "A key of the same size as the hash output (for instance, 256 bits for
# "HS256") or larger MUST be used with this algorithm."
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC_ALGORITHMS = frozenset(RSA_ALGORITHMS) | frozenset(_EC_ALGORITHM.values())
MIN_RSA_BITS = 2048  # RFC 7518 3.3: "A key of size 2048 bits or larger MUST be used"

_ALGORITHMS: dict[str, Algorithm] = {}
if AVAILABLE:
    _ALGORITHMS = {
        name: impl for name, impl in get_default_algorithms().items()
        if name in HMAC_ALGORITHMS or name in RSA_ALGORITHMS or name in _EC_ALGORITHM.values()
    }

# base64url (RFC 7515 2, RFC 4648 5) to base64 in one pass: "-" and "_" become "+" and "/",
# while a "+", "/" or "=" in the input becomes "*", which strict decoding then refuses.
_TO_BASE64 = bytes.maketrans(b"-_+/=", b"+/***")
_decode_json = msgspec.json.Decoder().decode
_HMAC_DIGEST = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_hmac_new: Callable[..., Any] = hmac.new
try:  # the C HMAC object the stdlib's hmac.HMAC wraps: copy/update/digest without Python frames
    import _hashlib

    _hmac_new = _hashlib.hmac_new
except ImportError:  # pragma: no cover - a Python built without OpenSSL's hashlib
    pass
# Tokens from one issuer share a few headers: parse each once. Bounded (cleared when full),
# since anyone can send headers.
_HEADERS: dict[bytes, tuple[dict[str, Any], str, str | None]] = {}
_HEADER_CACHE_SIZE = 256


def require() -> None:
    """Raise MissingDependency unless PyJWT and cryptography are installed."""
    if not AVAILABLE:
        raise MissingDependency("JWT tokens", "jwt")


class VerifyKey:
    """One verification key and the algorithms it may verify."""

    __slots__ = ("_key", "_macs", "_rsa", "algorithms", "kid", "kind", "symmetric")

    def __init__(self, key: Any, algorithms: frozenset[str], kid: str | None, kind: str) -> None:
        self._key = key
        self.algorithms = algorithms
        self.kid = kid
        self.kind = kind  # "hmac", "rsa" or "ec": for messages and logs
        # An HMAC secret: verifying costs no more than remembering a verified signature would.
        self.symmetric = kind == "hmac"
        # An HMAC secret keyed once per algorithm it may verify (the padded key's hash state):
        # each verify copies that state instead of hashing the key again.
        self._macs: dict[str, Any] = {
            alg: _hmac_new(key, digestmod=_HMAC_DIGEST[alg]) for alg in algorithms
            if alg in _HMAC_DIGEST
        } if kind == "hmac" else {}
        # An RSA key's (padding, hash) per algorithm, built once: a verify is one call into
        # cryptography (what PyJWT's RSAAlgorithm/RSAPSSAlgorithm.verify do, objects rebuilt).
        self._rsa: dict[str, tuple[Any, Any]] = {
            alg: _rsa_scheme(alg) for alg in algorithms if alg in RSA_ALGORITHMS
        } if kind == "rsa" else {}

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        if alg not in self.algorithms:  # the binding: never verify with another key type
            return False
        mac = self._macs.get(alg)
        if mac is not None:
            # OpenSSL's HMAC from the keyed state, compared in constant time.
            mac = mac.copy()
            mac.update(signing_input)
            return hmac.compare_digest(mac.digest(), signature)
        scheme = self._rsa.get(alg)
        if scheme is not None:
            try:
                self._key.verify(signature, signing_input, scheme[0], scheme[1])
            except InvalidSignature:
                return False
            return True
        return bool(_ALGORITHMS[alg].verify(signing_input, self._key, signature))

    def __repr__(self) -> str:
        return f"VerifyKey({self.kind}, kid={self.kid!r}, {sorted(self.algorithms)})"


def _rsa_scheme(alg: str) -> tuple[Any, Any]:
    """(padding, hash) of an RS*/PS* algorithm (RFC 7518 3.3, 3.5): PKCS #1 v1.5, or PSS with
    MGF1 of the same hash and a salt as long as the hash (as PyJWT signs and verifies)."""
    kinds: dict[str, Callable[[], hashes.HashAlgorithm]] = {
        "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
    digest = kinds[alg[2:]]()
    if alg.startswith("RS"):
        return padding.PKCS1v15(), digest
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest


def hmac_key(secret: str | bytes, kid: str | None = None) -> VerifyKey:
    """An HMAC secret, for the HS* algorithms its length allows. Raises ValueError for a
    secret that is too short or looks like a public key (a PEM, a JWK)."""
    require()
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    algorithms = frozenset(a for a in HMAC_ALGORITHMS if len(raw) >= _HMAC_MIN_BYTES[a])
    if not algorithms:
        raise ValueError(f"the secret has {len(raw)} bytes: HS256 needs at least 32 "
                         "(RFC 7518 3.2)")
    try:  # PyJWT refuses PEM, SSH, DER and JWK text as a secret: that is a configuration error
        key = _ALGORITHMS["HS256"].prepare_key(raw)
    except InvalidKeyError as exc:
        raise ValueError(f"not a usable secret: {exc}") from None
    return VerifyKey(key, algorithms, kid, "hmac")


def public_key_pem(data: bytes, kid: str | None = None) -> VerifyKey:
    """A PEM public key (RSA or EC). Raises ValueError for anything else, a private key
    included: the server needs only the public half."""
    require()
    if b"PRIVATE KEY" in data:
        raise ValueError("this is a private key: give the server the public key only")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    return _asymmetric(key, kid, None)


def jwk_key(jwk: Mapping[str, Any]) -> VerifyKey:
    """One JWK of a key set (RFC 7517 4). Raises ValueError if it cannot be used to verify."""
    require()
    kty, alg, kid = jwk.get("kty"), jwk.get("alg"), jwk.get("kid")
    if kid is not None and type(kid) is not str:
        raise ValueError("kid is not a string")
    use = jwk.get("use")
    if use is not None and use != "sig":  # RFC 7517 4.2: "enc" keys do not verify
        raise ValueError(f"use is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (type(ops) is not list or "verify" not in ops):
        raise ValueError("key_ops does not include 'verify'")
    if alg is not None and type(alg) is not str:
        raise ValueError("alg is not a string")
    if "d" in jwk:
        raise ValueError("a private key in a public key set: refused")
    key: Any
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(dict(jwk))
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
        elif kty == "oct":
            # A shared secret has no place in a published key set; accepting one would let
            # whoever can read the set sign tokens.
            raise ValueError("symmetric (oct) keys are not accepted from a key set")
        else:
            raise ValueError(f"unsupported kty {kty!r}")
    except (InvalidKeyError, KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"unreadable {kty} key: {exc}") from None
    return _asymmetric(key, kid, alg)


def _asymmetric(key: Any, kid: str | None, alg: str | None) -> VerifyKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS} "
                             "(RFC 7518 3.3)")
        algorithms, kind = frozenset(RSA_ALGORITHMS), "rsa"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        name = _EC_ALGORITHM.get(key.curve.name)
        if name is None:
            raise ValueError(f"unsupported curve {key.curve.name}")
        algorithms, kind = frozenset({name}), "ec"
    else:
        raise ValueError(f"unsupported key type {type(key).__name__}")
    if alg is not None:  # RFC 7517 4.4: a key that names its algorithm is used with that one only
        if alg not in algorithms:
            raise ValueError(f"alg {alg!r} does not fit a {kind} key")
        algorithms = frozenset({alg})
    return VerifyKey(key, algorithms, kid, kind)


class Compact:
    """A JWS in compact form, split and its header read; the signature is not checked yet."""

    __slots__ = ("alg", "header", "kid", "payload", "signature", "signing_input")

    def __init__(self, token: str | bytes, max_size: int) -> None:
        raw = token.encode("ascii", "replace") if isinstance(token, str) else token
        if len(raw) > max_size:
            raise TokenInvalid(f"token longer than {max_size} bytes")
        if raw.count(b".") != 2:  # RFC 7515 7.1; five parts would be a JWE, which we do not take
            raise TokenInvalid("not a JWS in compact form (three dot-separated parts)")
        signing_input, _, signature = raw.rpartition(b".")
        head, _, self.payload = signing_input.partition(b".")
        cached = _HEADERS.get(head)
        if cached is None:
            cached = _read_header(head)
            if len(_HEADERS) >= _HEADER_CACHE_SIZE:
                _HEADERS.clear()
            _HEADERS[head] = cached
        self.header, self.alg, self.kid = cached
        self.signing_input = signing_input
        self.signature = _b64(signature, "signature")

    def claims(self) -> dict[str, Any]:
        """The payload as a JSON object (RFC 7519 7.2 step 10); call after the signature
        check, so nothing unauthenticated is parsed beyond the header."""
        return _json_object(_b64(self.payload, "payload"), "payload")


def _read_header(segment: bytes) -> tuple[dict[str, Any], str, str | None]:
    header = _json_object(_b64(segment, "header"), "header")
    alg = header.get("alg")
    if type(alg) is not str:
        raise TokenInvalid("header has no alg", TokenErrorCode.ALGORITHM)
    kid = header.get("kid")
    if kid is not None and type(kid) is not str:
        raise TokenInvalid("header kid is not a string")
    # RFC 7515 4.1.11: extensions listed in crit MUST be understood; we understand none.
    # b64 (RFC 7797, unencoded payloads) is such an extension.
    if "crit" in header or "b64" in header:
        raise TokenInvalid("header uses an extension (crit, b64) this server does not take")
    return header, alg, kid


def _b64(segment: bytes, what: str) -> bytes:
    try:
        # strict_mode: no characters outside the alphabet, no misplaced padding.
        return binascii.a2b_base64(
            segment.translate(_TO_BASE64) + b"=" * (-len(segment) % 4), strict_mode=True
        )
    except binascii.Error:
        raise TokenInvalid(f"{what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = _decode_json(data)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested ~1000 deep
        raise TokenInvalid(f"{what} is not JSON") from None
    if type(value) is not dict:
        raise TokenInvalid(f"{what} is not a JSON object")
    return value
