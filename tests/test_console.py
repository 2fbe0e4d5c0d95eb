"""The operators' console against the real stack: crash-ops serves the page and
the login; the page calls the /ops views with a session instead of an HMAC signature.

What an operator (and whoever audits them) would check: a login with the right password gets a
short-lived, HttpOnly, SameSite=Strict session, a wrong one a reason; failed logins lock a name
and an address for a while (429 with Retry-After) and are audited without writing down a name
that is no account; an expired, forged or ended session is refused; a write without the
session's CSRF token is refused; a reader reads but cannot write; a group's admin acts only on
its group; the audit row of a console write names the account; a signed request is judged by its
signature as before. Then the page itself in Debian's chromium, on a desktop and a phone-sized
screen, with a screenshot of each step under var/test/screens/console-*.png and no console error.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect
from test_page import PHONE, Console, chromium, shot

from harness import BIN, FAST_CONFIG, NO_FAULTS, Process, create_jackpot, free_port, now_ms, taking_bets, wait_for
from streams.cache import redis_client
from web import accounts, sessions

pytestmark = pytest.mark.slow

# Tight limits, so that locking takes a few attempts (the defaults are 5 per name and 20 per address).
PER_NAME, PER_ADDRESS = 3, 6
# The browser's channel: long enough betting windows to click Abort in, short flights.
PAGE_CONFIG = {**FAST_CONFIG, "betting_ms": 6000, "starting_ms": 500, "cooldown_ms": 500}
# Chromium logs every answer with an error status as "Failed to load resource" (a refusal the
# page shows in words, or the 401 of the first look for a session): expected, and nothing else.
REFUSALS = re.compile(r"Failed to load resource: the server responded with a status of (400|401|403|409|429)")
PASSWORDS = {name: f"pw-{name}-{uuid.uuid4().hex}" for name in
             ("ops", "ops-reader", "ga-ops", "ops-locked", "ops-temp", "ops-refresh")}
ROLES = {"ops": ("admin", ""), "ops-reader": ("reader", ""), "ga-ops": ("admin", "ga"), "ops-locked": ("admin", ""),
         "ops-temp": ("admin", ""), "ops-refresh": ("reader", "")}


async def crash_admin(pipe, *args: str, password: str | None = None) -> tuple[int, str, str]:
    """`crash-admin ...` against this pipeline's database, a password on stdin as a script gives it."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "crash-admin"), *args, env=pipe.env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate((password + "\n").encode() if password else b""), 60)
    return proc.returncode or 0, out.decode(), err.decode()


class Operator:
    """One browser's worth of HTTP: its own cookie jar, from one local address."""

    def __init__(self, pipe, address: str = "127.0.0.1", base_url: str | None = None) -> None:
        self.pipe, self.csrf = pipe, ""
        self.base_url = base_url or pipe.ops_url()
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                          connector=aiohttp.TCPConnector(local_addr=(address, 0)))
        # For a cookie given by hand (a forged or old one): no jar to add the session's own.
        self.bare = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                          connector=aiohttp.TCPConnector(local_addr=(address, 0)))

    async def __aenter__(self) -> Operator:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.http.close()
        await self.bare.close()

    async def request(self, method: str, path: str, body: Any = None, csrf: str | None = None,
                      cookie: str | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Content-Type": "application/json"}
        token = self.csrf if csrf is None else csrf
        if token:
            headers["X-CSRF-Token"] = token
        if cookie is not None:
            headers["Cookie"] = f"crash_console={cookie}"
        data = json.dumps(body).encode() if body is not None else None
        http = self.http if cookie is None else self.bare
        async with http.request(method, self.base_url + path, data=data, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.json(content_type=None), resp

    async def login(self, name: str, password: str | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
        status, body, resp = await self.request("POST", "/ops/login",
                                                {"name": name, "password": password or PASSWORDS[name]})
        if status == 200:
            self.csrf = body["csrf_token"]
        return status, body, resp

    def token(self) -> str:
        return next(c.value for c in self.http.cookie_jar if c.key == "crash_console")


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("console", env={"CRASH_CONSOLE_FAILURES_PER_NAME": str(PER_NAME),
                                                  "CRASH_CONSOLE_FAILURES_PER_ADDRESS": str(PER_ADDRESS)})


@pytest.fixture(scope="module")
async def operators(pipe):
    """The accounts, made with the CLI as an administrator would."""
    results = await asyncio.gather(*(crash_admin(pipe, "operator", "add", name, "--role", role,
                                                 *(["--group", group] if group else []), password=PASSWORDS[name])
                                     for name, (role, group) in ROLES.items()))
    assert all(code == 0 for code, _, _ in results), results
    return PASSWORDS


@pytest.fixture(scope="module")
async def channels(pipe):
    a = await pipe.create_channel("a", operator_group="ga")
    b = await pipe.create_channel("b", operator_group="gb")
    return a, b


async def audit_rows(pipe, action: str, **match: Any) -> list[dict[str, Any]]:
    rows = await pipe.rows("SELECT * FROM audit_log WHERE action = :a ORDER BY seq", a=action)
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


# ---------------------------------------------------------------- the rules, without the stack

def test_passwords_are_kept_as_scrypt_hashes_only():
    stored = accounts.hash_password("correct horse battery")
    scheme, log2_n, r, p, salt, digest = stored.split("$")
    assert (scheme, int(log2_n), int(r), int(p)) == ("scrypt", accounts.LOG2_N, accounts.R, accounts.P)
    assert "correct horse" not in stored and len(base64.b64decode(salt)) == accounts.SALT_BYTES
    assert accounts.check_password("correct horse battery", stored)
    assert not accounts.check_password("correct horse batterY", stored)
    assert accounts.hash_password("correct horse battery") != stored                     # a salt per hash
    assert not accounts.check_password("x", "scrypt$99$8$1$AAAA$AAAA") and not accounts.check_password("x", "junk")
    with pytest.raises(accounts.AccountError, match="12 to 1024"):
        accounts.hash_password("short")


async def test_failed_logins_are_counted_once_for_every_process_within_the_window(base_settings):
    # Two limiters on the same Redis: two crash-ops processes behind the ingress.
    store = redis_client(base_settings.redis_url)
    prefix = f"test:failures:{uuid.uuid4().hex[:8]}:"
    one, two = (accounts.FailureLimiter(store, prefix, limit=3, window_ms=60_000) for _ in range(2))
    try:
        assert [await one.fail("ops", 0), await two.fail("ops", 10_000), await one.fail("ops", 20_000)] == \
            [False, False, True]
        assert await two.retry_after_ms("ops", 20_000) == 40_000   # until the first failure is a minute old
        assert await one.retry_after_ms("ops", 60_000) == 0        # it left the window: one more try
        assert await one.retry_after_ms("other", 20_000) == 0
        await two.clear("ops")
        assert await one.retry_after_ms("ops", 20_001) == 0
        # Many processes failing a key at once: exactly one of them sees the lock start.
        assert sum(await asyncio.gather(*(limiter.fail("spray", 30_000) for limiter in (one, two) * 5))) == 1
        assert await store.zcard(prefix + "spray") == 3            # a key keeps its newest `limit` failures
        assert 0 < await store.pttl(prefix + "spray") <= 60_000     # and leaves with its window
    finally:
        await store.delete(prefix + "ops", prefix + "spray")
        await store.aclose()


def test_a_console_token_is_not_a_players_token():
    token, session = sessions.issue("s" * 32, "ops", 60, kind="console", role="admin", group="ga")
    assert sessions.verify("s" * 32, token, kind="console") == session and session.role == "admin"
    with pytest.raises(sessions.SessionError):
        sessions.verify("s" * 32, token)                           # another kind: another MAC domain
    player, _ = sessions.issue("s" * 32, "ops", 60)
    with pytest.raises(sessions.SessionError):
        sessions.verify("s" * 32, player, kind="console")


def test_production_refuses_the_development_console_secret(monkeypatch):
    from streams.settings import Settings, SettingsError
    monkeypatch.setenv("CRASH_PROFILE", "production")
    monkeypatch.setenv("CRASH_CONSOLE_SECRET", "dev-console-secret")
    with pytest.raises(SettingsError, match="CRASH_CONSOLE_SECRET is the development default"):
        Settings()
    monkeypatch.delenv("CRASH_CONSOLE_SECRET")
    with pytest.raises(SettingsError, match="CRASH_CONSOLE_SECRET is not set"):
        _ = Settings().console_secret             # a pod not given it: the console is off, not open


# ---------------------------------------------------------------- login and sessions

async def test_an_operator_logs_in_with_a_short_lived_session_and_logs_out(pipe, operators):
    async with Operator(pipe) as ops:
        status, body, resp = await ops.login("ops")
        assert status == 200, body
        assert (body["name"], body["role"], body["group"]) == ("ops", "admin", "")
        assert body["session_ttl_s"] == 900 and 0 < body["expires_at"] - now_ms() <= 900_000
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ops" in cookie, cookie
        assert "Secure" not in cookie, "plain HTTP (the demo, the tests): Secure only over HTTPS"
        claims = payload(ops.token())
        assert (claims["sub"], claims["rol"]) == ("ops", "admin") and "password" not in json.dumps(claims)
        status, me, _ = await ops.request("GET", "/ops/session")
        assert status == 200 and me["name"] == "ops" and me["csrf_token"] == body["csrf_token"], me
        login = (await audit_rows(pipe, "console.login", actor="ops"))[-1]
        assert login["key_id"] == f"console:{claims['sid']}" and PASSWORDS["ops"] not in login["request"]
        # Over HTTPS (here: as the ingress in front says), the cookie is Secure too.
        async with aiohttp.ClientSession() as plain:
            async with plain.post(pipe.ops_url() + "/ops/login", json={"name": "ops", "password": PASSWORDS["ops"]},
                                  headers={"X-Forwarded-Proto": "https"}) as resp:
                assert resp.status == 200 and "Secure" in resp.headers["Set-Cookie"]
        token = ops.token()
        status, body, resp = await ops.request("POST", "/ops/logout", {})
        assert status == 200 and "Max-Age=0" in resp.headers["Set-Cookie"], body
        assert (await audit_rows(pipe, "console.logout", key_id=f"console:{claims['sid']}"))
        # The old token, replayed after the logout: its signature is good, its session is gone.
        status, body, _ = await ops.request("GET", "/ops/session", cookie=token)
        assert status == 401 and body["error"] == "session_ended", body


async def test_the_console_answers_503_while_its_redis_is_down(pipe, operators):
    """The sessions and the failure counts live in Redis: an ops process that cannot reach it
    refuses a login and a session's request with a 503 in JSON and a Retry-After, and lets no
    one in unchecked."""
    async with Operator(pipe) as ops:
        status, body, _ = await ops.login("ops")
        assert status == 200, body
        token = ops.token()
    port = free_port()
    cut_off = Process("ops-no-redis", [str(BIN / "crash-ops"), "worker", "-l", "info"],
                      {**pipe.env, "CRASH_WEB_PORT": str(port), "CRASH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                       "CRASH_APP_ID": f"{pipe.env['CRASH_APP_ID']}-no-redis",
                       "CRASH_DATA_DIR": str(pipe.tmp / "faust-ops-no-redis")}, pipe._log("ops-no-redis"))
    cut_off.start()
    pipe.others["ops-no-redis"] = cut_off
    try:
        base_url = f"http://127.0.0.1:{port}"
        await pipe.wait_http(f"{base_url}/ops/console")
        async with Operator(pipe, base_url=base_url) as ops:
            status, body, resp = await ops.login("ops")
            assert (status, body["error"], resp.headers.get("Retry-After")) == (503, "unavailable", "5"), body
            assert "session store" in body["reason"] and "Set-Cookie" not in resp.headers
            status, body, resp = await ops.request("GET", "/ops/session", cookie=token)
            assert (status, body["error"], resp.headers.get("Retry-After")) == (503, "redis_unavailable", "1"), body
    finally:
        cut_off.stop()
        del pipe.others["ops-no-redis"]


async def test_a_wrong_password_is_refused_in_words_and_audited(pipe, operators):
    async with Operator(pipe) as ops:
        status, body, resp = await ops.login("ops-reader", "not the password")
        assert status == 401 and body == {"error": "bad_login", "reason": "the name or the password is wrong"}
        assert "Set-Cookie" not in resp.headers
        status, body, _ = await ops.request("POST", "/ops/login", {"name": "ops-reader"})
        assert status == 400 and "password" in body["reason"]
        async with ops.http.post(pipe.ops_url() + "/ops/login", data="name=ops&password=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
            assert resp.status == 415 and "JSON" in (await resp.json())["reason"]   # no cross-site form login
    failed = await audit_rows(pipe, "console.login_failed", actor="ops-reader")
    assert failed and "not the password" not in failed[-1]["request"]


async def test_failed_logins_lock_the_name_and_the_address(pipe, operators):
    # A name: PER_NAME failures, then even the right password waits (from another address too).
    async with Operator(pipe, "127.0.0.2") as attacker, Operator(pipe) as owner:
        for _ in range(PER_NAME):
            assert (await attacker.login("ops-locked", "guess"))[0] == 401
        status, body, resp = await attacker.login("ops-locked")
        assert status == 429 and body["error"] == "too_many_failures", body
        assert "account name" in body["reason"] and "try again in 15 min" in body["reason"], body
        assert 890 <= int(resp.headers["Retry-After"]) <= 900
        status, body, _ = await owner.login("ops-locked")
        assert status == 429 and "account name" in body["reason"]
        # The count is not the process's: a restarted crash-ops (or another replica) keeps the lock.
        pipe.others["ops"].kill9()
        pipe.start_ops()
        await pipe.wait_http(f"{pipe.ops_url()}/ops/channels")
        status, body, _ = await owner.login("ops-locked")
        assert status == 429 and "account name" in body["reason"], body
        assert len(await audit_rows(pipe, "console.login_failed", actor="ops-locked")) == PER_NAME
        assert len(await audit_rows(pipe, "console.login_locked", actor="ops-locked")) == 1
        # Other accounts are not locked.
        assert (await owner.login("ops-reader"))[0] == 200
    # An address: PER_ADDRESS failures over names that are no account, then nothing from there.
    unknown = [f"nobody-{uuid.uuid4().hex[:6]}" for _ in range(PER_ADDRESS)]
    async with Operator(pipe, "127.0.0.3") as sprayer, Operator(pipe) as elsewhere:
        for name in unknown:
            assert (await sprayer.login(name, "guess"))[0] == 401
        status, body, _ = await sprayer.login("ops-reader")
        assert status == 429 and "address" in body["reason"], body
        assert (await elsewhere.login("ops-reader"))[0] == 200
    rows = await audit_rows(pipe, "console.login_failed", actor="unknown")
    assert len(rows) >= PER_ADDRESS and all(json.loads(r["request"])["name_tag"] for r in rows)
    every_row = json.dumps(await pipe.rows("SELECT * FROM audit_log"))
    assert not any(name in every_row for name in unknown), "a name that is no account is never written down"


async def test_expired_forged_and_ended_sessions_are_refused_and_a_used_one_is_refreshed(pipe, operators,
                                                                                          base_settings):
    secret = base_settings.console_secret
    async with Operator(pipe) as ops:
        assert (await ops.login("ops-refresh"))[0] == 200
        sid = payload(ops.token())["sid"]
        expired, _ = sessions.issue(secret, "ops-refresh", 60, now_ms=now_ms() - 120_000, kind="console",
                                    role="reader", session_id=sid)
        status, body, _ = await ops.request("GET", "/ops/payouts", cookie=expired)
        assert status == 401 and body["error"] == "session_expired" and "log in again" in body["reason"], body
        forged, _ = sessions.issue("another secret of 32 characters!", "ops-refresh", 600, kind="console",
                                   role="admin", session_id=sid)
        status, body, _ = await ops.request("GET", "/ops/payouts", cookie=forged)
        assert status == 401 and body["error"] == "bad_session", body
        player, _ = sessions.issue(base_settings.session_secret, "ops-refresh", 600)
        status, body, _ = await ops.request("GET", "/ops/payouts", cookie=player)
        assert status == 401 and body["error"] == "bad_session", "a player's token is no console session"
        # Used two minutes after its token was issued: a new token for the same session rides on the answer.
        older, _ = sessions.issue(secret, "ops-refresh", 600, now_ms=now_ms() - 120_000, kind="console",
                                  role="reader", session_id=sid)
        status, body, resp = await ops.request("GET", "/ops/payouts", cookie=older)
        assert status == 200, body
        assert "crash_console" in resp.cookies, dict(resp.headers)
        fresh = resp.cookies["crash_console"].value
        claims = payload(fresh)
        assert claims["sid"] == sid and now_ms() - claims["iat"] < 10_000 and claims["exp"] > now_ms() + 800_000
        assert resp.headers["Cache-Control"] == "no-store"
        # A session whose account is disabled ends at its next refresh.
        assert (await crash_admin(pipe, "operator", "disable", "ops-refresh"))[0] == 0
        status, body, _ = await ops.request("GET", "/ops/payouts", cookie=older)
        assert status == 401 and body["error"] == "session_ended" and "disabled" in body["reason"], body
        assert (await ops.login("ops-refresh"))[0] == 401
        assert (await crash_admin(pipe, "operator", "enable", "ops-refresh"))[0] == 0
        assert (await ops.login("ops-refresh"))[0] == 200


async def test_the_cli_keeps_no_password_and_refuses_what_cannot_be_an_account(pipe, operators):
    code, out, err = await crash_admin(pipe, "operator", "add", "ops", "--role", "admin", password="y" * 20)
    assert code == 2 and "exists" in err
    code, out, err = await crash_admin(pipe, "operator", "add", "new-one", "--role", "admin", password="short")
    assert code == 2 and "12 to 1024" in err
    code, out, err = await crash_admin(pipe, "operator", "add", "bad name!", "--role", "admin", password="y" * 20)
    assert code == 2 and "name must match" in err
    code, out, _ = await crash_admin(pipe, "operator", "list")
    assert code == 0 and "ga-ops\tadmin\tga" in out and "ops-reader\treader\t*" in out
    assert not any(password in out for password in PASSWORDS.values()) and "scrypt" not in out
    hashes = await pipe.rows("SELECT name, password_hash FROM operator_account")
    assert all(r["password_hash"].startswith("scrypt$") and PASSWORDS.get(r["name"], "?") not in r["password_hash"]
               for r in hashes)
    assert await audit_rows(pipe, "operator.add", target="ga-ops")
    # --replace (what ./stack up does for its demo account at every start): a new password.
    code, out, _ = await crash_admin(pipe, "operator", "add", "ops-temp", "--role", "reader", "--replace",
                                     password="a new password for ops-temp")
    assert code == 0 and "replaced" in out, out
    async with Operator(pipe) as ops:
        assert (await ops.login("ops-temp", "a new password for ops-temp"))[1]["role"] == "reader"
    assert await audit_rows(pipe, "operator.replace", target="ops-temp")


# ---------------------------------------------------------------- what a session may do

async def test_a_console_write_needs_the_sessions_csrf_token(pipe, operators, channels):
    a, _ = channels
    async with Operator(pipe) as ops:
        assert (await ops.login("ops"))[0] == 200
        status, body, _ = await ops.request("POST", f"/ops/channels/{a}/config", {"cooldown_ms": 350}, csrf="")
        assert status == 403 and body["error"] == "csrf_missing" and "X-CSRF-Token" in body["reason"], body
        status, body, _ = await ops.request("POST", f"/ops/channels/{a}/config", {"cooldown_ms": 350}, csrf="0" * 32)
        assert status == 403 and body["error"] == "csrf_mismatch", body
        status, body, _ = await ops.request("POST", "/ops/logout", {}, csrf="")
        assert status == 403 and body["error"] == "csrf_missing", "logging out needs it too"
        status, body, _ = await ops.request("POST", f"/ops/channels/{a}/config", {"cooldown_ms": 350})
        assert status == 202 and body["config"]["cooldown_ms"] == 350, body
        # The server's validation speaks through the session too.
        status, body, _ = await ops.request("POST", f"/ops/channels/{a}/config", {"grace_ms": 9000})
        assert status == 400 and body == {"error": "bad_config", "reason": "grace_ms must be an integer in [20, 5000]"}


async def test_a_reader_session_reads_but_cannot_write(pipe, operators, channels):
    a, _ = channels
    async with Operator(pipe) as reader:
        assert (await reader.login("ops-reader"))[0] == 200
        status, body, _ = await reader.request("GET", "/ops/payouts?status=failed")
        assert status == 200 and "payouts" in body
        status, body, _ = await reader.request("GET", "/ops/audit?limit=5")
        assert status == 200 and body["chain"]["intact"], body
        status, body, _ = await reader.request("POST", f"/ops/channels/{a}/abort", {"reason": "not mine to do"})
        assert status == 403 and body["error"] == "forbidden" and "admin" in body["reason"], body
        assert "ops-reader is a reader" in body["reason"]
        assert not await audit_rows(pipe, "term.abort", actor="ops-reader")


async def test_a_group_admin_session_acts_only_on_its_groups_channels(pipe, operators, channels):
    a, b = channels
    async with Operator(pipe) as ga:
        assert (await ga.login("ga-ops"))[0] == 200
        status, body, _ = await ga.request("POST", f"/ops/channels/{b}/abort", {"reason": "not my group"})
        assert status == 403 and body["reason"] == "operator ga-ops acts only on operator group ga", body
        status, body, _ = await ga.request("POST", f"/ops/channels/{a}/config", {"operator_group": "gb"})
        assert status == 403, body
        status, body, _ = await ga.request("GET", "/ops/audit")
        assert status == 403 and "every operator group" in body["reason"], body
        status, body, _ = await ga.request("POST", f"/ops/channels/{a}/config", {"cooldown_ms": 400})
        assert status == 202, body
    rows = await audit_rows(pipe, "channel.config", actor="ga-ops", target=a)
    assert rows and rows[-1]["key_id"].startswith("console:")


async def test_the_audit_row_of_a_console_write_names_the_account_and_the_view_checks_the_chain(
        pipe, operators, channels):
    a, _ = channels
    async with Operator(pipe) as ops:
        assert (await ops.login("ops"))[0] == 200
        sid = payload(ops.token())["sid"]
        status, body, _ = await ops.request("POST", f"/ops/channels/{a}/start", {"reason": "show the console"})
        assert status == 202, body
        row = (await audit_rows(pipe, "term.start", target=a))[-1]
        assert (row["actor"], row["key_id"]) == ("ops", f"console:{sid}")
        request = json.loads(row["request"])
        assert request["path"] == f"/ops/channels/{a}/start" and request["body"] == {"reason": "show the console"}
        status, log, _ = await ops.request("GET", "/ops/audit?limit=3")
        assert status == 200 and log["chain"]["intact"] and log["chain"]["head_seq"] == log["rows"][0]["seq"]
        assert [r["ok"] for r in log["rows"]] == [True] * len(log["rows"])
        newest = next(r for r in log["rows"] if r["seq"] == row["seq"])
        assert newest["actor"] == "ops" and newest["request"]["body"]["reason"] == "show the console"
        # A row changed behind the log's back shows as such, until it is put back.
        async with pipe.db.begin() as conn:
            from sqlalchemy import text
            await conn.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = :s"), {"s": row["seq"]})
        try:
            status, log, _ = await ops.request("GET", f"/ops/audit?before={row['seq'] + 1}&limit=2")
            assert status == 200 and not log["chain"]["intact"], log
            changed = f"row {row['seq']}: its hash does not match its content (the row was changed)"
            assert changed in log["chain"]["problems"], log["chain"]
            assert not next(r for r in log["rows"] if r["seq"] == row["seq"])["ok"]
        finally:
            async with pipe.db.begin() as conn:
                await conn.execute(text("UPDATE audit_log SET actor = 'ops' WHERE seq = :s"), {"s": row["seq"]})
        status, log, _ = await ops.request("GET", "/ops/audit?limit=1000")
        assert log["chain"]["intact"], log["chain"]
        status, body, _ = await ops.request("GET", "/ops/audit?limit=0")
        assert status == 400 and body["reason"]


async def test_a_signed_request_is_judged_by_its_signature_alone(pipe, operators, channels):
    a, _ = channels
    async with Operator(pipe) as reader:
        assert (await reader.login("ops-reader"))[0] == 200
        # The admin key's signature with a reader's cookie beside it: the signature decides.
        status, body = await pipe.signed(pipe.ops_url(), "admin", "POST", f"/ops/channels/{a}/config",
                                         {"cooldown_ms": 300}, headers={"Cookie": f"crash_console={reader.token()}"})
        assert status == 202, body
        assert (await audit_rows(pipe, "channel.config", actor="admin"))[-1]["key_id"] == "admin"
        # Without a signature or a session: as before.
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(pipe.ops_url() + "/ops/payouts") as resp:
                assert resp.status == 401 and (await resp.json())["reason"] == "missing header X-Key-Id"


async def test_the_page_and_its_files_are_served_with_a_strict_policy(pipe):
    async with aiohttp.ClientSession() as http:
        async with http.get(pipe.ops_url() + "/ops/console/") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            policy = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert "Log in" in await resp.text()
        for name in ("console.js", "console.css", "play.css", "money.js"):
            async with http.get(f"{pipe.ops_url()}/ops/console/{name}") as resp:
                assert resp.status == 200, name
        for name in ("..%2F..%2Fsetup.cfg", "play.html", "console.html"):
            async with http.get(f"{pipe.ops_url()}/ops/console/{name}") as resp:
                assert resp.status == 404 and (await resp.json())["reason"], name
        async with http.get(pipe.ops_url() + "/ops/console", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/ops/console/"


# ---------------------------------------------------------------- the page in a browser

@pytest.fixture(scope="module")
async def stage(pipe, operators):
    """The browser's world: a channel with a bet to void, a wallet that fails (the refund fails
    for good after one try), a jackpot that has paid a winner."""
    await pipe.start_wallet()
    pipe.start_service("payout", "crash-payout", {
        "CRASH_PAYOUT_METRICS_PORT": "0", "CRASH_PAYOUT_MAX_TRIES": "1", "CRASH_PAYOUT_BACKOFF_BASE_MS": "50",
        "CRASH_PAYOUT_BACKOFF_CAP_MS": "200", "CRASH_PAYOUT_POLL_MS": "100"})
    channel = await pipe.create_channel("page", **PAGE_CONFIG)
    await pipe.wait_gateway_channel(channel)
    jackpot = f"{pipe.name}-jp"
    await create_jackpot(pipe, jackpot_id=jackpot, name="Console pot", tier="local", channel_id=channel,
                         currency="EUR", rate_bps=100, seed=5_000, cap=1_000_000, trigger="external")
    status, body = await pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jackpot}/award",
                                     {"playerId": "lucky-1", "jackpotId": jackpot}, headers={"Idempotency-Key": "c-1"})
    assert status == 200, body

    async def paid() -> bool:
        return bool(await pipe.rows("SELECT 1 FROM jackpot_award_winner w JOIN payout_outbox o ON o.order_no ="
                                    " w.order_no WHERE w.jackpot_id = :j AND o.status = 'acked'", j=jackpot))
    await wait_for(paid, 60, "the jackpot's winner paid")
    return channel, jackpot


@pytest.fixture(scope="module")
async def browser():
    async with chromium("chromium-console-") as context:
        yield context


async def log_in(page: Page, pipe, name: str) -> None:
    await page.context.clear_cookies()          # the pages of a test share a browser: no one else's session
    await page.goto(pipe.ops_url() + "/ops/console/")
    await expect(page.get_by_test_id("login-name")).to_be_visible(timeout=10_000)
    await page.get_by_test_id("login-name").fill(name)
    await page.get_by_test_id("login-password").fill(PASSWORDS[name])
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("who")).to_contain_text(name, timeout=10_000)


async def confirm(page: Page, reason: str) -> None:
    await expect(page.get_by_test_id("modal-reason")).to_be_visible()
    await page.get_by_test_id("modal-reason").fill(reason)
    await page.get_by_test_id("modal-confirm").click()


async def stays_put(page: Page, selector: str) -> None:
    """The element does not move while the page refreshes its data (two polls)."""
    before = await page.locator(selector).bounding_box()
    for _ in range(2):
        shown = await page.get_by_test_id("status").inner_text()
        await page.wait_for_function("(t) => document.querySelector('[data-testid=status]').textContent !== t",
                                     arg=shown, timeout=15_000)
    assert await page.locator(selector).bounding_box() == before, selector


async def test_an_operator_runs_the_game_from_the_console(pipe, operators, stage, browser):
    channel, jackpot = stage
    console = Console()
    console.expected = REFUSALS
    page = await browser.new_page()
    console.watch(page, "ops")
    try:
        # ---- the login: a wrong password is refused in words, the right one opens the console
        await page.goto(pipe.ops_url() + "/ops/console/")
        await page.get_by_test_id("login-name").fill("ops")
        await page.get_by_test_id("login-password").fill("not the password")
        await page.get_by_test_id("login-submit").click()
        await expect(page.get_by_test_id("login-msg")).to_have_text(
            "Login refused: the name or the password is wrong", timeout=10_000)
        await shot(page, "console-01-login-refused")
        await page.get_by_test_id("login-password").fill(PASSWORDS["ops"])
        await page.get_by_test_id("login-submit").click()
        await expect(page.get_by_test_id("who")).to_have_text("ops · admin · every group", timeout=10_000)
        cookies = [c for c in await browser.cookies() if c["name"] == "crash_console"]
        assert cookies and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == "", "no script of the page reads the session"

        # ---- the channels, and one of them
        await expect(page.get_by_test_id(f"channel-{channel}")).to_be_visible(timeout=10_000)
        await page.get_by_test_id(f"channel-{channel}").click()
        await expect(page.get_by_test_id("channel-title")).to_contain_text(channel)
        await expect(page.locator("#terms tr").first).to_contain_text(channel, timeout=20_000)
        await shot(page, "console-02-channels")
        await stays_put(page, "[data-testid=config]")

        # ---- a config change the server refuses, in its words; then one it takes
        await page.get_by_test_id("cfg-grace_ms").fill("600")
        await page.get_by_test_id("cfg-save").click()
        await expect(page.get_by_test_id("config-msg")).to_have_text(
            "Config refused: grace_ms must be smaller than starting_ms", timeout=10_000)
        await shot(page, "console-03-config-refused")
        await page.get_by_test_id("cfg-grace_ms").fill(str(PAGE_CONFIG["grace_ms"]))
        await page.get_by_test_id("cfg-cooldown_ms").fill("700")
        await page.get_by_test_id("cfg-save").click()
        await expect(page.get_by_test_id("config-msg")).to_have_text(
            "Config saved (cooldown_ms): it applies from the next term.", timeout=10_000)

        async def configured() -> bool:
            rows = await pipe.rows("SELECT config FROM channel WHERE channel_id = :c", c=channel)
            return json.loads(rows[0]["config"])["cooldown_ms"] == 700
        await wait_for(configured, 30, "the new cool-down in MySQL")

        # ---- a term with a bet, aborted with a reason: the bet's refund fails at the wallet
        term = await taking_bets(pipe, channel, window_left_ms=4000)
        order = f"cs-{uuid.uuid4().hex[:10]}"
        status, body = await pipe.api("POST", "/v1/bets", {"api_order_no": order, "channel_id": channel, "amount": 250,
                                                           "user_id": "console-player", "currency": "EUR"})
        assert status == 200 and body["term_id"] == term["term_id"], body
        bet_id = body["bet_id"]
        async with pipe.wallet() as wallet:
            await wallet.set_faults(**{**NO_FAULTS, "error_rate": 1.0})
        await page.get_by_test_id("abort").click()
        await expect(page.get_by_role("dialog")).to_contain_text(f"Abort the running term of {channel}?")
        await shot(page, "console-04-abort-confirm")
        await confirm(page, "operator drill from the console")
        await expect(page.get_by_test_id("command-msg")).to_contain_text("Abort sent", timeout=10_000)
        aborted = page.get_by_test_id(f"term-{term['term_id']}")
        await expect(aborted).to_contain_text("aborted: operator drill from the console", timeout=30_000)
        await shot(page, "console-05-term-aborted")

        # ---- a term's proof, verified from the console; the verifier page linked
        closed = await wait_for(lambda: pipe.rows(
            "SELECT term_id FROM crash_term WHERE channel_id = :c AND state = 'closed' AND aborted = 0"
            " ORDER BY seq DESC LIMIT 1",
            c=channel), 60, "a closed term")
        closed_id = closed[0]["term_id"]
        await page.get_by_test_id(f"verify-{closed_id}").click()
        await expect(page.get_by_test_id("verify-msg")).to_contain_text(f"{closed_id} verified", timeout=15_000)
        link = await page.get_by_test_id(f"verifier-{closed_id}").get_attribute("href")
        assert link == f"{pipe.base.page_url.rstrip('/')}/verify/?term={closed_id}"
        await shot(page, "console-06-term-verified")

        # ---- the failed refund, sent again once the wallet answers
        order_no = f"refund:{bet_id}"
        await wait_for(lambda: pipe.rows("SELECT 1 FROM payout_outbox WHERE order_no = :o AND status = 'failed'",
                                         o=order_no), 60, "the refund to fail")
        async with pipe.wallet() as wallet:
            await wallet.set_faults(**NO_FAULTS)
        await page.get_by_test_id("tab-payouts").click()
        row = page.get_by_test_id(f"payout-{order_no}")
        await expect(row).to_contain_text("failed", timeout=10_000)
        await expect(row).to_contain_text("€2.50")
        await shot(page, "console-07-failed-payout")
        await page.get_by_test_id(f"retry-{order_no}").click()
        await confirm(page, "the wallet is back")
        await expect(page.get_by_test_id("payout-msg")).to_have_text(
            f"Payout {order_no} is ready again: the payout adapter sends it now.", timeout=10_000)
        await wait_for(lambda: pipe.rows("SELECT 1 FROM payout_outbox WHERE order_no = :o AND status = 'acked'",
                                         o=order_no), 60, "the refund paid")
        await page.get_by_test_id("payout-status").select_option("acked")
        await expect(page.get_by_test_id(f"payout-{order_no}")).to_contain_text("acked", timeout=10_000)

        # ---- the jackpot: its winner, a reconciliation, verified commitments, paused
        await page.get_by_test_id("tab-jackpots").click()
        await page.get_by_test_id(f"jackpot-{jackpot}").click()
        await expect(page.get_by_test_id("jackpot-title")).to_contain_text("Console pot")
        await expect(page.get_by_test_id("awards")).to_contain_text("lucky-1", timeout=10_000)
        await expect(page.get_by_test_id("awards")).to_contain_text("acked")
        await page.get_by_test_id("jackpot-reconcile").click()
        await expect(page.get_by_test_id("jackpot-msg")).to_contain_text(
            "Reconciled: the pool equals seeds + contributions − awards + compensations", timeout=40_000)
        await page.get_by_test_id("jackpot-verify").click()
        await expect(page.get_by_test_id("jackpot-msg")).to_contain_text("No commitment revealed yet", timeout=10_000)
        await page.get_by_test_id("jackpot-pause").click()
        await confirm(page, "a pause for the drill")
        await expect(page.get_by_test_id("jackpot-status")).to_have_text("paused", timeout=30_000)
        await expect(page.get_by_test_id("jackpot-pause")).to_be_disabled()
        await shot(page, "console-08-jackpot-paused")

        # ---- the audit log: every step above, by the account, with the chain checked
        await page.get_by_test_id("tab-audit").click()
        await expect(page.get_by_test_id("chain")).to_contain_text("Chain intact", timeout=10_000)
        audit = page.get_by_test_id("audit")
        for action in ("console.login", "channel.config", "term.abort", "payout.retry", "jackpot.paused"):
            row = audit.locator("tr", has=page.locator("td", has_text=re.compile(f"^{re.escape(action)}$"))).first
            await expect(row.locator("td").nth(2)).to_have_text("ops")
        await expect(audit).to_contain_text("“operator drill from the console”")
        await shot(page, "console-09-audit")
        rows = await pipe.rows("SELECT actor, key_id FROM audit_log WHERE action IN ('term.abort', 'payout.retry',"
                               " 'jackpot.paused') AND actor = 'ops'")
        assert len(rows) >= 3 and all(r["key_id"].startswith("console:") for r in rows)

        # ---- logging out brings the login back
        await page.get_by_test_id("logout").click()
        await expect(page.get_by_test_id("login-msg")).to_have_text("You have logged out.")
        assert console.errors == [], console.errors
    finally:
        await page.close()


async def test_a_reader_follows_the_game_on_a_phone(pipe, operators, stage, browser):
    channel, jackpot = stage
    console = Console()
    console.expected = REFUSALS
    page = await browser.new_page()
    await page.set_viewport_size(PHONE)
    console.watch(page, "phone")
    try:
        await log_in(page, pipe, "ops-reader")
        await expect(page.get_by_test_id("readonly")).to_be_visible()
        await page.get_by_test_id(f"channel-{channel}").click()
        await expect(page.locator("#terms tr").first).to_contain_text(channel, timeout=20_000)
        for control in ("abort", "start", "cfg-save"):
            await expect(page.get_by_test_id(control)).to_be_hidden()            # a reader has nothing to press
        await shot(page, "console-phone-01-channel")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
        await page.get_by_test_id("tab-payouts").click()
        await page.get_by_test_id("payout-status").select_option("")
        await expect(page.locator("#payouts tr").first).to_contain_text("refund:", timeout=10_000)
        await shot(page, "console-phone-02-payouts")
        await page.get_by_test_id("tab-jackpots").click()
        await page.get_by_test_id(f"jackpot-{jackpot}").click()
        await expect(page.get_by_test_id("awards")).to_contain_text("lucky-1", timeout=10_000)
        await shot(page, "console-phone-03-jackpot")
        await page.get_by_test_id("tab-audit").click()
        await expect(page.get_by_test_id("chain")).to_contain_text("Chain intact", timeout=10_000)
        await shot(page, "console-phone-04-audit")
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert console.errors == [], console.errors
    finally:
        await page.close()


async def test_an_expired_session_brings_the_login_back_with_its_reason(pipe, operators, browser, base_settings):
    console = Console()
    console.expected = REFUSALS
    page = await browser.new_page()
    console.watch(page, "expiry")
    try:
        await log_in(page, pipe, "ops")
        cookie = next(c for c in await browser.cookies() if c["name"] == "crash_console")
        expired, _ = sessions.issue(base_settings.console_secret, "ops", 60, now_ms=now_ms() - 120_000,
                                    kind="console", role="admin", session_id=payload(cookie["value"])["sid"])
        await browser.add_cookies([{**cookie, "value": expired}])
        await page.get_by_test_id("tab-payouts").click()
        await expect(page.get_by_test_id("login-msg")).to_have_text(
            "the console session has expired: log in again", timeout=10_000)
        await shot(page, "console-10-session-expired")
        assert console.errors == [], console.errors
    finally:
        await page.close()

