"""Fuzzing the HTTP faces from their OpenAPI documents with schemathesis, against the real stack
(gateway: bet and jackpot APIs; crash-ops: the operator views): every operation gets generated
requests, valid and invalid by the schema, both HMAC-signed (they reach the validation behind
the signature) and unsigned. Whatever arrives: no server error, and every error is a JSON body
with a reason. Bounded: a fixed number of examples per operation and mode."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from web.signing import sign_headers

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = 12          # per operation, mode and signing: bounded, a few seconds per operation


class Signed(requests.auth.AuthBase):
    """Signs the exact request that goes out (path, query and body bytes) as web.signing does."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id, self.secret = key_id, secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        r.headers.update(sign_headers(self.key_id, self.secret, r.method or "GET", r.path_url, body))
        return r


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("fuzz")


@pytest.fixture(scope="module")
async def seeded(pipe):
    """Something for the generated requests to hit: a channel and a jackpot."""
    from harness import create_jackpot
    channel_id = await pipe.create_channel("c")
    await create_jackpot(pipe, jackpot_id=f"{pipe.name}-jp", tier="mega", currency="EUR", rate_bps=100, seed=100,
                         cap=10**6, trigger="external")
    await pipe.wait_gateway_channel(channel_id)
    return channel_id


def problems_of(response: requests.Response) -> list[str]:
    found = []
    if response.status_code >= 500 and response.status_code != 503:
        found.append(f"server error {response.status_code}: {response.text[:300]}")
    if response.status_code >= 400:
        try:
            body = response.json()
        except (json.JSONDecodeError, ValueError):
            return [*found, f"{response.status_code} is not JSON: {response.text[:200]!r}"]
        if not (isinstance(body, dict) and isinstance(body.get("reason"), str) and body["reason"]):
            found.append(f"{response.status_code} without a reason: {body!r}")
    return found


def fuzz(spec: str, base_url: str, key: tuple[str, str], narrow=None) -> list[str]:
    """Every operation of the document, valid and invalid requests, signed and unsigned."""
    schema = schemathesis.openapi.from_path(str(REPO / "web" / spec))
    if narrow is not None:
        narrow(schema.raw_schema)
    found: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for auth in (Signed(*key), None):
                label = f"{operation.label} {mode.value} {'signed' if auth else 'unsigned'}"
                _run(operation.as_strategy(generation_mode=mode), base_url, session, auth, label, found)
    return found


def _run(strategy, base_url: str, session: requests.Session, auth, label: str, found: list[str]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:
        response = case.call(base_url=base_url, session=session, auth=auth, timeout=30)
        found.extend(f"{label}: {case.method} {case.formatted_path}: {problem}" for problem in problems_of(response))
    try:
        run()
    except Unsatisfiable:
        pass        # nothing invalid to generate (an operation without parameters or body)


async def test_the_bet_and_jackpot_apis_answer_every_generated_request_with_json(pipe, seeded):
    key = ("operator", pipe.api_keys["operator"][0])
    found = await asyncio.to_thread(fuzz, "jackpot.openapi.yaml", pipe.gateway_url, key)
    assert found == [], "\n".join(found[:30])


async def test_the_operator_views_answer_every_generated_request_with_json(pipe, seeded):
    def narrow(raw):
        # Generated channels get short chains (a chain of 100 million hashes is valid, but slow).
        raw["components"]["schemas"]["ChannelConfig"]["properties"]["chain_length"]["maximum"] = 2000
    key = ("admin", pipe.api_keys["admin"][0])
    found = await asyncio.to_thread(fuzz, "operator.openapi.yaml", pipe.ops_url(), key, narrow)
    assert found == [], "\n".join(found[:30])


def test_the_operator_document_matches_the_views():
    """Every operator view is documented, and nothing else (the routes Faust would serve)."""
    import os
    import subprocess
    import sys

    import yaml
    spec = yaml.safe_load((REPO / "web" / "operator.openapi.yaml").read_text())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    code = ("import os; os.environ['CRASH_PROCESS_ROLE'] = 'ops'\n"
            "from streams.app import app\n"
            "import web.jackpot_views, web.operator_views, web.metrics_view\n"
            "for path, view in app.web.views.items():\n"
            "    for m in ('get', 'post'):\n"
            "        if m in type(view).__dict__: print(m.upper(), path)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    served = {tuple(line.split(" ", 1)) for line in out.stdout.splitlines()}
    assert documented == served, (documented ^ served)


async def test_the_bet_api_answers_every_generated_request_with_json(pipe, seeded):
    def narrow(raw):
        # Generated bets go to the seeded channel (elsewhere they are 404s, which says little).
        raw["components"]["schemas"]["Name"] = {"type": "string", "enum": [seeded]}
    key = ("operator", pipe.api_keys["operator"][0])
    found = await asyncio.to_thread(fuzz, "bet.openapi.yaml", pipe.gateway_url, key, narrow)
    assert found == [], "\n".join(found[:30])


async def test_the_gateway_documents_are_its_routes():
    """web/bet.openapi.yaml and web/jackpot.openapi.yaml together are exactly the gateway's routes."""
    import yaml

    from streams.settings import Settings
    from web.gateway import KEY_GATEWAY, make_app
    documented = set()
    for spec in ("bet.openapi.yaml", "jackpot.openapi.yaml"):
        paths = yaml.safe_load((REPO / "web" / spec).read_text())["paths"]
        documented |= {(m.upper(), p) for p, ops in paths.items() for m in ops}
    app = make_app(Settings())
    try:
        served = {(r.method, r.resource.canonical.replace("{tail:.*}", "{tail}")) for r in app.router.routes()
                  if r.method != "HEAD"}
    finally:
        gateway = app[KEY_GATEWAY]
        await gateway.db.dispose()
        await gateway.redis.aclose()
    assert documented == served, documented ^ served
