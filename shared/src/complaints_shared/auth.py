"""Identity and access: OpenID Connect bearer tokens, and the roles each route allows.

Invariants:
- Every route declares who may call it with :func:`access` (roles, anonymous submission when
  enabled) or :func:`public` (health, metrics, survey links whose signed token is the
  credential); :func:`check_declared` refuses to start an app with an undeclared route.  The
  declaration is also the route's OpenAPI ``x-roles``: the documented matrix and the test that
  calls every route as every role read that one source.
- A token is accepted only when its signature verifies with a key of the issuer's JWKS
  (fetched through discovery, cached, fetched again for an unknown ``kid``: key rotation), and
  its issuer, audience, expiry and not-before hold (PyJWT; asymmetric algorithms only).  The
  keys are fetched when the service starts and, once older than ``jwks_ttl``, again behind
  the requests (:meth:`OidcVerifier.refresh_soon`, over one kept connection): a request waits
  for the issuer only when no key is known yet or its token names an unknown one.  The same
  token sent again is taken from a bounded cache of verified tokens until it expires (the
  cache is dropped when the issuer's key set changes).
- Who acted comes from the token (``sub``), never from a request body.
- Missing or bad token: 401 with ``WWW-Authenticate: Bearer``; a valid token without a
  needed role: 403.  Both problem+json; no token or claim value is logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import jwt
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from complaints_shared.errors import Forbidden, TooManyRequests, Unauthenticated
from complaints_shared.latest import keep_latest

log = logging.getLogger(__name__)

ROLES = (
    "agent",
    "supervisor",
    "manager",
    "analyst",
    "quality",
    "admin",
    "privacy",
    "integrator",
    "channel-gateway",
)
"""The platform's roles (realm roles in Keycloak). ``supervisor`` includes ``agent`` and
``manager`` includes ``supervisor`` in the identity provider, so tokens carry all three."""

EFFECTIVE_ROLES: dict[str, set[str]] = {
    "agent": {"agent"},
    "supervisor": {"supervisor", "agent"},
    "manager": {"manager", "supervisor", "agent"},
}
"""The composite roles of the realm: a supervisor is an agent too, a manager a supervisor."""

Authority = Literal["manager", "supervisor", "agent"]
AUTHORITIES: tuple[Authority, ...] = ("manager", "supervisor", "agent")

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
ANONYMOUS = "anonymous"
X_ROLES = "x-roles"
X_PUBLIC = "x-public"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and roles (or an anonymous submitter)."""

    subject: str
    roles: frozenset[str]
    client_id: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.subject == ANONYMOUS

    def has_any(self, roles: Iterable[str]) -> bool:
        return bool(self.roles & set(roles))

    def authority(self) -> Authority | None:
        """The highest case-handling role: ``manager``, ``supervisor``, ``agent`` or none."""
        for role in AUTHORITIES:
            if role in self.roles:
                return role
        return None


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass
class OidcVerifier:
    """Validates access tokens of one issuer for one audience."""

    issuer: str
    audience: str
    roles_claim: str = "realm_access.roles"
    leeway: float = 0.0
    jwks_ttl: float = 300.0
    refetch_interval: float = 10.0  # at most this often for an unknown kid
    transport: httpx.AsyncBaseTransport | None = None
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict, repr=False)
    _fetched_at: float = field(default=-1e9, repr=False)
    _jwks_uri: str | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _client: httpx.AsyncClient | None = field(default=None, repr=False)  # one, kept open
    _refreshing: asyncio.Task[None] | None = field(default=None, repr=False)
    # tokens whose signature and claims verified: token → (principal, its expiry), so a caller
    # that sends the same token again (a channel gateway, a frontend) is not verified again;
    # the latest verified_kept (complaints_shared.latest), the oldest dropped first
    _verified: OrderedDict[str, tuple[Principal, float]] = field(
        default_factory=OrderedDict, repr=False
    )
    verified_kept: int = 10_000

    async def _get(self, url: str) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5, transport=self.transport)
        r = await self._client.get(url)
        r.raise_for_status()
        return r.json()

    async def aclose(self) -> None:
        """Stop a refresh in flight and close the connection to the issuer."""
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
            self._refreshing = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _refresh(self, force: bool) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age < (self.refetch_interval if force else self.jwks_ttl):
                return
            if self._jwks_uri is None:
                meta = await self._get(
                    f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
                )
                if meta.get("issuer") != self.issuer:
                    raise RuntimeError("the discovery document names another issuer")
                self._jwks_uri = str(meta["jwks_uri"])
            jwks = await self._get(self._jwks_uri)
            keys: dict[str, jwt.PyJWK] = {}
            for jwk in jwks.get("keys", []):
                if jwk.get("use", "sig") != "sig" or "kid" not in jwk:
                    continue
                try:
                    keys[jwk["kid"]] = jwt.PyJWK(jwk)
                except (jwt.PyJWKError, jwt.InvalidKeyError):
                    continue  # a key type this library cannot use: never one we accept
            if set(keys) != set(self._keys):
                self._verified.clear()  # a key left the set: tokens it signed verify again
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def _fetch(self, force: bool) -> None:
        """:meth:`_refresh`, an issuer that cannot be reached logged (the known keys stay)."""
        try:
            await self._refresh(force)
        except (
            httpx.HTTPError,
            RuntimeError,
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
        ) as exc:
            # unreachable, or answering documents that are not what OpenID Connect describes
            log.warning("identity provider unavailable: %s", type(exc).__name__)

    def refresh_soon(self) -> None:
        """Fetch the issuer's keys in the background, unless a fetch is on its way (at a
        service's start, so that no request waits for them; when they grow old, while requests
        go on with the known ones).  An issuer that cannot be reached is logged, and asked
        again when a request needs it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._fetch(force=False))

    async def key_for(self, kid: str) -> jwt.PyJWK | None:
        if not self._keys:
            await self._fetch(force=False)
        elif time.monotonic() - self._fetched_at >= self.jwks_ttl:
            self.refresh_soon()
        if kid not in self._keys and self._keys:
            await self._fetch(force=True)  # the issuer may have rotated its keys
        if not self._keys:
            raise Unauthenticated("the identity provider cannot be reached")
        return self._keys.get(kid)

    async def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known[1] + self.leeway:
                return known[0]
            del self._verified[token]
        principal, expires = await self._verify(token)
        keep_latest(self._verified, token, (principal, expires), self.verified_kept)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS or not isinstance(kid, str):
            raise Unauthenticated("the token's algorithm or key id is not accepted")
        key = await self.key_for(kid)
        if key is None:
            raise Unauthenticated("the token is not signed by the issuer's keys")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is invalid") from None
        roles = _claim(claims, self.roles_claim)
        principal = Principal(
            subject=str(claims["sub"]),
            roles=frozenset(r for r in roles if isinstance(r, str))
            if isinstance(roles, list)
            else frozenset(),
            client_id=claims.get("azp") or claims.get("client_id"),
        )
        return principal, float(claims["exp"])


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="JWT",
    description="An OpenID Connect access token of the configured issuer. Locally:"
    " `./dev token agent` (or supervisor, manager, analyst, quality, admin, integrator,"
    " channel-gateway).",
)

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


class RateLimiter:
    """A token bucket per client address (anonymous submissions)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(per_minute, 1))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) > 10_000:  # forget idle clients
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 300}
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1, now)
        return True


class _Authorize:
    def __init__(self, roles: tuple[str, ...], anonymous_setting: str | None) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        self.roles = frozenset(roles)
        self.anonymous_setting = anonymous_setting

    async def __call__(self, request: Request, credentials: Credentials) -> Principal:
        access: Access = request.app.state.access
        if credentials is None:
            if self.anonymous_setting and getattr(access, self.anonymous_setting, False):
                client = request.client.host if request.client else "unknown"
                if not access.limiter.allow(client):
                    raise TooManyRequests("too many anonymous submissions from this address")
                principal = Principal(ANONYMOUS, frozenset())
                request.state.principal = principal
                return principal
            raise Unauthenticated("a bearer token is required", error="invalid_request")
        principal = await access.verifier.verify(credentials.credentials)
        if not principal.has_any(self.roles):
            raise Forbidden(f"this needs one of the roles {', '.join(sorted(self.roles))}")
        request.state.principal = principal
        return principal


def access(*roles: str, anonymous_setting: str | None = None) -> dict[str, Any]:
    """Keyword arguments of a route: only tokens with one of ``roles`` may call it (and nobody
    at all without a token, unless ``anonymous_setting`` names an :class:`Access` flag that is
    on).  The roles are the route's OpenAPI ``x-roles``."""
    extra: dict[str, Any] = {X_ROLES: list(roles)}
    if anonymous_setting:
        extra["x-anonymous-when"] = f"COMPLAINTS_{anonymous_setting.upper()}=true"
    return {
        "dependencies": [Depends(_Authorize(tuple(roles), anonymous_setting))],
        "openapi_extra": extra,
    }


def public(why: str) -> dict[str, Any]:
    """Keyword arguments of a route anyone may call, with the reason (OpenAPI ``x-public``)."""
    return {"openapi_extra": {X_PUBLIC: why}}


async def current_principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


Actor = Annotated[Principal, Depends(current_principal)]
"""The caller of a route declared with :func:`access` (a handler parameter)."""


@dataclass
class Access:
    """What an app checks tokens with (``app.state.access``)."""

    verifier: OidcVerifier
    public_submission: bool = False
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(30))


def check_declared(app: FastAPI | APIRouter) -> None:
    """Refuse an app with a route that does not say who may call it."""
    for route in app.routes:
        if isinstance(route, APIRoute):
            extra = route.openapi_extra or {}
            if X_ROLES not in extra and X_PUBLIC not in extra:
                raise RuntimeError(
                    f"{sorted(route.methods or ())} {route.path} declares no access"
                    " (access or public)"
                )
