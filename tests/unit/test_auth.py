"""Token validation rules without a network: keys made here, the issuer's documents served by
an in-process transport.  (The whole path against the real Keycloak is in
tests/integration/test_access.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from complaints_shared.auth import OidcVerifier, RateLimiter
from complaints_shared.errors import Unauthenticated

ISSUER = "https://id.example.test/realms/complaints"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    """An issuer's discovery document and JWKS, with keys that can rotate."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {"k1": new_key()}
        self.jwks_fetches = 0

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"})
        self.jwks_fetches += 1
        return httpx.Response(200, json=self.jwks())

    def token(self, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": ["complaints-api", "account"],
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
            "azp": "complaints-cli",
            "realm_access": {"roles": ["agent", "offline_access"]},
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def verifier(issuer: Issuer, **kw: Any) -> OidcVerifier:
    return OidcVerifier(
        ISSUER,
        "complaints-api",
        transport=httpx.MockTransport(issuer.handler),
        refetch_interval=0,
        **kw,
    )


async def test_a_valid_token_gives_the_subject_and_roles(issuer: Issuer):
    p = await verifier(issuer).verify(issuer.token())
    assert p.subject == "user-1" and "agent" in p.roles and p.client_id == "complaints-cli"
    assert p.authority() == "agent"


async def test_a_flat_roles_claim_is_a_setting(issuer: Issuer):
    token = issuer.token(roles=["analyst"], realm_access=None)
    p = await verifier(issuer, roles_claim="roles").verify(token)
    assert p.roles == {"analyst"}


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -10}, "expired"),  # times: seconds from when the test runs
        ({"nbf": 600}, "not valid yet"),
        ({"aud": "another-api"}, "another audience"),
        ({"iss": "https://evil.example.test/realms/complaints"}, "another issuer"),
        ({"sub": None}, "invalid"),
    ],
)
async def test_claims_that_do_not_hold_are_refused(issuer: Issuer, claims: dict, reason: str):
    # the times are made now, not when the suite was collected: in a whole run this test
    # comes ten minutes or more after that, and a token "valid from ten minutes on" was valid
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") else v for k, v in claims.items()}
    with pytest.raises(Unauthenticated, match=reason):
        await verifier(issuer).verify(issuer.token(**claims))


async def test_a_token_sent_again_is_verified_once_and_only_until_it_expires(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
):
    v = verifier(issuer)
    expires = int(time.time()) + 2
    token = issuer.token(exp=expires)
    first = await v.verify(token)
    verified = 0
    original = v._verify

    async def counting(t: str) -> Any:
        nonlocal verified
        verified += 1
        return await original(t)

    monkeypatch.setattr(v, "_verify", counting)
    assert await v.verify(token) == first
    assert verified == 0  # taken from the cache of verified tokens
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(Unauthenticated, match="expired"):
        await v.verify(token)  # the cache honours the token's expiry
    assert verified == 1


async def test_the_latest_verified_tokens_are_kept_up_to_the_limit(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
):
    v = verifier(issuer, verified_kept=2)
    tokens = [issuer.token(sub=f"user-{i}") for i in range(3)]
    for token in tokens:
        await v.verify(token)
    verified: list[str] = []
    original = v._verify

    async def counting(t: str) -> Any:
        verified.append(t)
        return await original(t)

    monkeypatch.setattr(v, "_verify", counting)
    await v.verify(tokens[2])
    await v.verify(tokens[1])
    assert verified == []  # the latest two: kept
    assert (await v.verify(tokens[0])).subject == "user-0"
    assert verified == [tokens[0]]  # it had gone first, the oldest verified
    await v.verify(tokens[2])
    await v.verify(tokens[1])  # the oldest verified then: gone to make room for tokens[0]
    assert verified == [tokens[0], tokens[1]]


async def test_a_token_signed_by_another_key_is_refused(issuer: Issuer):
    forged = issuer.token(key=new_key())  # the issuer's kid, somebody else's key
    with pytest.raises(Unauthenticated, match="invalid"):
        await verifier(issuer).verify(forged)
    unknown = issuer.token(kid="k9", key=new_key())
    with pytest.raises(Unauthenticated, match="not signed by the issuer"):
        await verifier(issuer).verify(unknown)


async def test_symmetric_and_unsigned_tokens_are_refused(issuer: Issuer):
    hs = jwt.encode({"sub": "x"}, "secret-secret-secret-secret-32b!", algorithm="HS256")
    with pytest.raises(Unauthenticated, match="algorithm"):
        await verifier(issuer).verify(hs)
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        await verifier(issuer).verify(unsigned)
    with pytest.raises(Unauthenticated, match="not a JWT"):
        await verifier(issuer).verify("not-a-token")


async def test_rotated_keys_are_fetched_when_a_new_kid_appears(issuer: Issuer):
    v = verifier(issuer)
    await v.verify(issuer.token())
    fetches = issuer.jwks_fetches
    await v.verify(issuer.token())  # cached
    assert issuer.jwks_fetches == fetches
    issuer.keys = {"k2": new_key()}  # the issuer rotates
    p = await v.verify(issuer.token(kid="k2"))
    assert p.subject == "user-1" and issuer.jwks_fetches == fetches + 1


async def test_keys_fetched_ahead_leave_the_first_request_nothing_to_wait_for(issuer: Issuer):
    v = verifier(issuer)
    v.refresh_soon()  # as a service does when it starts
    v.refresh_soon()  # one fetch on its way is enough
    for _ in range(100):
        if issuer.jwks_fetches:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert issuer.jwks_fetches == 1
    assert (await v.verify(issuer.token())).subject == "user-1"
    assert issuer.jwks_fetches == 1  # the request used the keys fetched ahead
    await v.aclose()


async def test_old_keys_are_fetched_again_behind_the_requests(issuer: Issuer):
    """Once the key set is older than its time to live, requests go on with it while it is
    fetched again; a key the issuer dropped is refused once the new set has arrived."""
    answer = asyncio.Event()
    answer.set()

    async def slow(request: httpx.Request) -> httpx.Response:
        await answer.wait()
        return issuer.handler(request)

    v = OidcVerifier(ISSUER, "complaints-api", transport=httpx.MockTransport(slow), jwks_ttl=0.05)
    await v.verify(issuer.token())
    assert issuer.jwks_fetches == 1
    await asyncio.sleep(0.1)  # the keys are old now
    answer.clear()  # and the issuer takes its time
    issuer.keys["k2"] = new_key()
    p = await asyncio.wait_for(v.verify(issuer.token(jti="another")), 1.0)
    assert p.subject == "user-1"  # answered with the known keys, not after the issuer
    answer.set()
    for _ in range(100):
        if issuer.jwks_fetches == 2:
            break
        await asyncio.sleep(0.01)
    assert issuer.jwks_fetches == 2  # fetched once more, in the background
    k1 = issuer.keys.pop("k1")  # the issuer drops the first key
    await asyncio.sleep(0.1)
    await v.verify(issuer.token(kid="k2"))  # old again: this request sets off a fetch
    for _ in range(100):
        if issuer.jwks_fetches == 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)
    with pytest.raises(Unauthenticated, match="not signed by the issuer"):
        await v.verify(issuer.token(key=k1, jti="a third"))  # a key no longer listed
    await v.aclose()


async def test_an_unreachable_issuer_is_a_401_not_a_crash():
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    v = OidcVerifier(ISSUER, "complaints-api", transport=httpx.MockTransport(down))
    with pytest.raises(Unauthenticated, match="cannot be reached"):
        await v.verify(Issuer().token())


async def test_an_issuer_answering_no_key_set_is_as_one_that_cannot_be_reached():
    def odd(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": f"{ISSUER}/certs"})
        return httpx.Response(200, json=["not", "a", "key", "set"])

    v = OidcVerifier(ISSUER, "complaints-api", transport=httpx.MockTransport(odd))
    with pytest.raises(Unauthenticated, match="cannot be reached"):
        await v.verify(Issuer().token())
    await v.aclose()


def test_anonymous_submissions_are_rate_limited_per_address():
    now = [0.0]
    limiter = RateLimiter(per_minute=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another address has its own bucket
    now[0] += 20  # one more allowed per 20 s
    assert limiter.allow("a") and not limiter.allow("a")
