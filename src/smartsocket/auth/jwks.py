"""A JSON Web Key Set (RFC 7517 5) from a file or a URL, cached, refreshed when a token names
a key it does not hold (a rotation), and periodically (a removal).

Refreshes are rate-limited: tokens with made-up ``kid`` values cannot make the server fetch
in a loop (at most one attempt per ``min_refresh_interval``), and concurrent unknown kids
share one fetch. A failed refresh keeps the keys already held. A refresh replaces the whole
set, so a key removed from the set stops verifying tokens.

A URL is fetched with urllib in a worker thread (one small GET every few minutes does not
justify an HTTP client dependency); a file is read inline (a local read of a few KB).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from smartsocket.auth import jws

logger = logging.getLogger("smartsocket.security")

MAX_JWKS_BYTES = 1 << 20  # a key set is a few KB; refuse to buffer a runaway response


class KeySetError(Exception):
    """The key set could not be loaded (the message says why)."""


def is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def parse_jwks(data: bytes, origin: str) -> dict[str | None, jws.VerifyKey]:
    """The usable keys of a JWKS document by kid. RFC 7517 5: keys we cannot use (another
    kty, ``use: enc``...) are skipped with a warning, not fatal; a set with none is."""
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise KeySetError(f"{origin}: not JSON ({exc})") from None
    if type(doc) is not dict or type(doc.get("keys")) is not list:
        raise KeySetError(f"{origin}: not a JWK set (an object with a 'keys' list)")
    keys: dict[str | None, jws.VerifyKey] = {}
    for index, jwk in enumerate(doc["keys"]):
        if type(jwk) is not dict:
            logger.warning("%s: key %d is not an object: skipped", origin, index)
            continue
        try:
            key = jws.jwk_key(jwk)
        except ValueError as exc:
            logger.warning("%s: key %d (kid %r) skipped: %s", origin, index, jwk.get("kid"), exc)
            continue
        if key.kid in keys:
            logger.warning("%s: duplicate kid %r: the first is kept", origin, key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise KeySetError(f"{origin}: no usable signing key")
    return keys


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https to http: keys fetched over TLS must not be
    substituted by whoever sits on a plain-text hop."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
            raise KeySetError(f"{req.full_url}: redirected to {newurl}, not https: refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade())


def fetch_url(url: str, timeout: float, max_bytes: int = MAX_JWKS_BYTES) -> bytes:
    """GET ``url`` (blocking: run it in a thread). Raises KeySetError."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise KeySetError(f"{url}: HTTP {response.status}")
            body: bytes = response.read(max_bytes + 1)
    except KeySetError:
        raise
    except Exception as exc:  # URLError, HTTPError, timeouts, TLS errors: all say "no keys"
        raise KeySetError(f"{url}: {exc}") from None
    if len(body) > max_bytes:
        raise KeySetError(f"{url}: larger than {max_bytes} bytes")
    return body


class JwksKeys:
    """Keys from a JWKS file or URL. ``find()`` is synchronous (the cache);
    ``refresh()`` (async) reloads, rate-limited. ``monotonic`` is injectable for tests."""

    def __init__(
        self,
        source: str,
        *,
        min_refresh_interval: float = 30.0,
        max_age: float = 600.0,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        jws.require()
        self.source = source
        self.url = is_url(source)
        if self.url and urlsplit(source).scheme == "http" and urlsplit(source).hostname not in (
            "localhost", "127.0.0.1", "::1",
        ):
            logger.warning("JWKS %s is fetched over plain http: anyone on the path can "
                           "substitute keys; use https", source)
        self.min_refresh_interval = min_refresh_interval
        self.max_age = max_age
        self.timeout = timeout
        self._monotonic = monotonic
        self._keys: dict[str | None, jws.VerifyKey] = {}
        self._loaded_at: float | None = None  # last successful load
        self._tried_at: float | None = None  # last attempt, successful or not
        self._inflight: asyncio.Future[bool] | None = None
        self._background: asyncio.Task[bool] | None = None
        self.algorithms: frozenset[str] = frozenset()
        self.generation = 0  # bumped whenever the keys change: caches of verdicts reset

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    def find(self, kid: str | None) -> jws.VerifyKey | None:
        """The key a token names. A token without a kid is taken only when the set holds
        exactly one key (trying every key would multiply the cost of a bad token)."""
        if kid is None:
            if len(self._keys) == 1:
                return next(iter(self._keys.values()))
            return None
        return self._keys.get(kid)

    def stale(self) -> bool:
        return self._loaded_at is None or self._monotonic() - self._loaded_at >= self.max_age

    def may_refresh(self) -> bool:
        """Whether a refresh attempt is allowed now (the rate limit)."""
        return self._tried_at is None or (
            self._monotonic() - self._tried_at >= self.min_refresh_interval
        )

    def load_file(self) -> bool:
        """Read a file source now (synchronous; also used by ``refresh``)."""
        return self.read_file() is None

    def read_file(self, *, log: bool = True) -> str | None:
        """``load_file``, returning why it failed (None: loaded). ``log=False`` at start-up,
        where the caller reports it in its own words."""
        assert not self.url
        self._tried_at = self._monotonic()
        try:
            keys = parse_jwks(Path(self.source).read_bytes(), self.source)
        except OSError as exc:
            problem = KeySetError(f"{self.source}: {exc.strerror or exc}")
        except KeySetError as exc:
            problem = exc
        else:
            self._install_keys(keys)
            return None
        if log:
            self._failed(problem)
        return str(problem)

    def refresh_soon(self) -> None:
        """Start a refresh in the background unless one runs or the rate limit says no."""
        if self._inflight is not None or not self.may_refresh():
            return
        if self._background is not None and not self._background.done():
            return
        # Keep a reference: the event loop holds tasks only weakly.
        self._background = asyncio.get_running_loop().create_task(self.refresh())

    async def wait_for_refresh(self) -> None:
        """Wait until a background refresh, if any, is over (tests; shutdown)."""
        task = self._background
        if task is not None:
            await asyncio.shield(task)

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the set unless rate-limited; True if new keys were installed. Concurrent
        callers share one attempt."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        if not force and not self.may_refresh():
            return False
        if not self.url:
            return self.load_file()
        self._tried_at = self._monotonic()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight = future
        try:
            try:
                data = await asyncio.to_thread(fetch_url, self.source, self.timeout)
            except KeySetError as exc:
                ok = self._failed(exc)
            else:
                ok = self._install(data)
            future.set_result(ok)
            return ok
        except BaseException as exc:  # cancelled: waiters must not hang
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        finally:
            self._inflight = None

    def _install(self, data: bytes) -> bool:
        try:
            keys = parse_jwks(data, self.source)
        except KeySetError as exc:
            return self._failed(exc)
        self._install_keys(keys)
        return True

    def _install_keys(self, keys: dict[str | None, jws.VerifyKey]) -> None:
        old = set(self._keys)
        self._keys = keys
        self._loaded_at = self._monotonic()
        self.algorithms = frozenset().union(*(k.algorithms for k in keys.values()))
        self.generation += 1
        if set(keys) != old:
            logger.info("JWKS %s: keys %s", self.source, sorted(map(str, keys)))

    def _failed(self, exc: KeySetError) -> bool:
        # Keep what we had: a JWKS endpoint down for a minute must not lock everyone out.
        logger.warning("JWKS refresh failed (%d keys kept): %s", len(self._keys), exc)
        return False

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "kids": sorted(map(str, self._keys)),
                "loaded": self.loaded}
