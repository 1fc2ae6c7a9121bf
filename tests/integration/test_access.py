"""Every route of every service, called as every role and with every kind of bad token, against
the real Keycloak: the answers match the declared matrix (``x-roles``, the same source as
docs/access.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from complaints_shared.auth import EFFECTIVE_ROLES
from tests.integration.conftest import Platform, StartPlatform
from tests.support import Tokens

pytestmark = pytest.mark.integration

USERS = ("agent", "supervisor", "manager", "analyst", "quality", "admin", "privacy")
SERVICE_ACCOUNTS = ("integrator", "channel-gateway")
PARAMS = {
    "complaint_id": str(uuid.UUID(int=0)),
    "problem_id": str(uuid.UUID(int=0)),
    "action_id": "a0",
    "request_id": "r0",
    "token": "not-a-survey-token",
    "customer_key": "0" * 64,
}


def routes(platform: Platform) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(service, method, url, operation) of every route the services declare."""
    out = []
    for service, server in platform.servers.items():
        for path, item in server.app.openapi()["paths"].items():
            url = server.url + re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path)
            for method, op in item.items():
                out.append((service, method.upper(), url, op))
    return out


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


async def call(http: httpx.AsyncClient, method: str, url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return await http.request(method, url, headers=headers, json=body)


async def test_every_route_answers_every_role_as_the_matrix_says(
    platform: Platform, tokens: Tokens
):
    found = routes(platform)
    assert len([r for r in found if "x-roles" in r[3]]) >= 40  # every service's API is covered
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http:
        for who in (*USERS, *SERVICE_ACCOUNTS):
            token = await tokens.get(who)
            roles = set(claims(token)["realm_access"]["roles"])
            assert EFFECTIVE_ROLES.get(who, {who}) <= roles  # the realm's composites

            answers = await asyncio.gather(
                *(call(http, method, url, token) for _, method, url, _ in found)
            )
            for (_, method, url, op), r in zip(found, answers, strict=True):
                if "x-public" in op:
                    ok = r.status_code not in (401, 403)
                elif roles & set(op["x-roles"]):
                    ok = r.status_code not in (401, 403) and r.status_code < 500
                else:
                    ok = r.status_code == 403 and (
                        r.headers["content-type"] == "application/problem+json"
                    )
                if not ok:
                    failures.append(f"{who} {method} {url}: {r.status_code}")
    assert failures == []


async def bad_tokens(tokens: Tokens) -> dict[str, str | None]:
    good = await tokens.get("manager")
    kid = jwt.get_unverified_header(good)["kid"]
    forged = jwt.encode(
        claims(good),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": kid},
    )
    short = await asyncio.to_thread(tokens.token_of_client, "complaints-cli-short", "manager")
    other = await asyncio.to_thread(tokens.token_of_client, "other-app", "manager")
    assert "complaints-api" not in claims(other).get("aud", [])
    await asyncio.sleep(2.5)  # the short-lived token expires (its lifespan is one second)
    return {
        "no token": None,
        "expired": short,
        "another audience": other,
        "another key": forged,
        "garbage": "abc.def.ghi",
    }


async def test_no_token_expired_foreign_or_forged_tokens_get_401_on_every_protected_route(
    platform: Platform, tokens: Tokens
):
    failures: list[str] = []
    async with httpx.AsyncClient(timeout=30) as http:
        found = routes(platform)
        for what, token in (await bad_tokens(tokens)).items():
            answers = await asyncio.gather(
                *(call(http, method, url, token) for _, method, url, _ in found)
            )
            for (_, method, url, op), r in zip(found, answers, strict=True):
                if "x-public" in op:
                    if r.status_code in (401, 403):
                        failures.append(f"{what} {method} {url}: {r.status_code} (public)")
                    continue
                challenge = r.headers.get("www-authenticate", "")
                if (
                    r.status_code != 401
                    or not challenge.startswith("Bearer")
                    or r.headers["content-type"] != "application/problem+json"
                ):
                    failures.append(f"{what} {method} {url}: {r.status_code} {challenge!r}")
    assert failures == []


async def test_anonymous_submission_only_when_enabled_and_rate_limited(
    start_platform: StartPlatform,
):
    body = {
        "channel": "web",
        "customer": {"email": "anon@example.org"},
        "subject": "Fila",
        "description": "Esperei muito.",
    }
    closed = await start_platform("intake")
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{closed.url('intake')}/complaints", json=body)
        assert r.status_code == 401
        opened = await start_platform(
            "intake", public_submission=True, public_submission_per_minute=2
        )
        url = f"{opened.url('intake')}/complaints"
        answers = [(await http.post(url, json=body)).status_code for _ in range(3)]
        assert answers == [201, 201, 429]
        limited = await http.post(url, json=body)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
        assert (await http.get(url)).status_code == 401  # reading stays closed


async def test_cors_lets_configured_origins_call_from_a_browser(
    start_platform: StartPlatform, tokens: Tokens
):
    p = await start_platform("resolution", cors_origins=["https://app.example.org"])
    async with httpx.AsyncClient(timeout=30) as http:
        preflight = await http.options(
            f"{p.url('resolution')}/cases",
            headers={
                "Origin": "https://app.example.org",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
        r = await http.get(
            f"{p.url('resolution')}/cases",
            headers={"Origin": "https://evil.example.org", **await tokens.headers("agent")},
        )
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
