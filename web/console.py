"""The operators' console: login, sessions, CSRF, and the page itself.

An operator logs in with a name and a password (web/accounts.py; accounts are made with
`crash-admin operator add`) and gets a short-lived session. The page then calls the same /ops
views as HMAC callers, authenticated by the session cookie instead of a signature, with the
same roles and operator-group scoping: the raw HMAC keys never reach a browser.
`web.ops_requests.signed_caller` is the one place that decides who is calling (a signature,
or a session through `session_caller` here).

    POST /ops/login    {name, password}  200 {name, role, group, expires_at, csrf_token} + the cookie
    POST /ops/logout                      200: the session has ended (X-CSRF-Token)
    GET  /ops/session                     who the session is, its CSRF token (and a refresh)
    GET  /ops/console/                    the page (web/static/console/, plain JS, no build step)

The session:

- the cookie `crash_console` holds a web/sessions.py token of kind `console`, signed with
  CRASH_CONSOLE_SECRET (name, role, group, session id, expiry): HttpOnly (no script reads it),
  SameSite=Strict (no other site's page makes the browser send it), Secure when the request
  came over HTTPS (directly or, per X-Forwarded-Proto, through the ingress), Path=/ops;
- it lasts CRASH_CONSOLE_SESSION_TTL_S (15 minutes) idle and is refreshed on use: a request
  more than REFRESH_AFTER_MS after its token was issued gets a new token for the same session,
  with the account read again from MariaDB (a disabled account, a changed role or group take
  effect within that minute); never more than MAX_AGE_MS after the login;
- the session id lives in Redis (shared by every crash-ops process) while the session does:
  logout deletes it, and a token whose session is gone is refused however good its signature;
- CSRF: every POST made with a session carries `X-CSRF-Token`, an HMAC of the session id that
  the page gets from the login answer or GET /ops/session (a page of another origin can read
  neither). With SameSite=Strict these are two independent guards.

Logins: JSON only (an HTML form of another site cannot send JSON, so nobody can log a victim
in to an account of theirs). Failed logins are counted per account name and per client address
(`accounts.FailureLimiter`, in Redis: one count for every crash-ops process, kept across their
restarts, in bounded memory); a locked name or address is answered
429 with Retry-After before any password is checked. An unknown name costs the same scrypt as a
wrong password. Every login, failed login, lock and logout is a row of the audit log, whose
actor is the account; a name that is no account is recorded only as a keyed tag, so that a
password typed into the name field never reaches the WORM archive.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from aiohttp import web as aioweb
from faust import web

from streams import audit, ids
from streams.app import app, settings
from streams.cache import REDIS_ERRORS
from streams.settings import SettingsError
from web import accounts, sessions
from web.http import BadRequest, parse_json_object, problem
from web.ops_resources import db, redis
from web.signing import HEADER_KEY_ID, Caller

__all__ = ["COOKIE", "CSRF_HEADER", "SessionCaller", "carries_session", "session_caller", "csrf_token"]

COOKIE = "crash_console"
CSRF_HEADER = "X-CSRF-Token"
REFRESH_AFTER_MS = 60_000
MAX_AGE_MS = 12 * 3600 * 1000
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_LOGIN_BODY = 4096
REDIS_PREFIX = "console:session:"
FAILURES_PREFIX = "console:failures:"
HASHING_AT_ONCE = 2          # concurrent scrypt checks (32 MiB and a core each): a login flood queues
# Request keys set by session_caller for the response hook: the refreshed (token, ttl), and that
# the request came with a session.
_REFRESHED = aioweb.RequestKey("console.refreshed", tuple)
_BY_SESSION = aioweb.RequestKey("console.caller", bool)

STATIC = Path(__file__).resolve().parent / "static"
# The page's files, by name (nothing else is served: no path ever reaches the file system).
FILES: dict[str, Path] = {
    "console.html": STATIC / "console" / "console.html",
    "console.js": STATIC / "console" / "console.js",
    "console.css": STATIC / "console" / "console.css",
    "play.css": STATIC / "play.css",          # the player's page's look, reused
    "money.js": STATIC / "money.js",          # amounts from integers, as the player's page shows them
}
# The page runs only its own files, sends only to this origin and is never framed (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                               " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_SESSION_WORDS = {
    "no_session": "log in to the console first",
    "session_expired": "the console session has expired: log in again",
    "bad_session": "the console session is not valid: log in again",
}


@dataclass(frozen=True)
class SessionCaller(Caller):
    """A caller authenticated by a console session. `key_id` is `console:<session id>`: it names
    the session in the audit log beside the account, and is never an HMAC key's id (those have
    no ':')."""
    account: str = ""
    expires_at: int = 0


def _now() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- resources (made on first use)

_hashing: asyncio.Semaphore | None = None
_limiters: tuple[accounts.FailureLimiter, accounts.FailureLimiter] | None = None


def limiters() -> tuple[accounts.FailureLimiter, accounts.FailureLimiter]:
    """(per account name, per client address); their keys are `_tag`s."""
    global _limiters
    if _limiters is None:
        window = settings.console_login_window_s * 1000
        # Under the app's id: the crash-ops processes of one deployment share the counts, and
        # another deployment on the same Redis has its own.
        prefix = f"{settings.app_id}:{FAILURES_PREFIX}"
        _limiters = (accounts.FailureLimiter(redis(), prefix + "name:", settings.console_failures_per_name, window),
                     accounts.FailureLimiter(redis(), prefix + "address:", settings.console_failures_per_address,
                                             window))
    return _limiters


def _secret() -> str:
    """The console's secret; without one (a production pod not given it) the console is off and
    says so, while the HMAC-signed views go on."""
    try:
        return settings.console_secret
    except SettingsError as error:
        raise BadRequest(503, "console_unconfigured", str(error)) from None


def _ttl_s() -> int:
    return max(1, min(settings.console_session_ttl_s, sessions.MAX_TTL_S))


def csrf_token(session_id: str) -> str:
    return hmac.new(_secret().encode(), b"csrf." + session_id.encode(), hashlib.sha256).hexdigest()[:32]


def client_address(request: aioweb.Request) -> str:
    """The client's address: the peer's, or the one the trusted proxies in front recorded."""
    hops = settings.console_proxy_hops
    if hops > 0:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops][:64]
    return (request.remote or "unknown")[:64]


def _is_https(request: aioweb.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _set_cookie(request: aioweb.Request, response: aioweb.StreamResponse, token: str, max_age: int) -> None:
    """The session's cookie, as a Set-Cookie header of its own (aiohttp turns `response.cookies`
    into headers before the response hook runs: a refreshed cookie is added there as a header)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[COOKIE] = token
    morsel = cookie[COOKIE]
    morsel.update({"max-age": str(max_age), "path": "/ops", "httponly": True, "samesite": "Strict"})
    if max_age == 0:
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    if _is_https(request):
        morsel["secure"] = True
    response.headers.add("Set-Cookie", morsel.OutputString())


def _clear_cookie(request: aioweb.Request, response: aioweb.StreamResponse) -> None:
    _set_cookie(request, response, "", 0)


async def _on_response(request: aioweb.Request, response: aioweb.StreamResponse) -> None:
    """A refreshed session's new cookie rides on whatever the view answered; an answer made for
    a session (players' ids, amounts) is never stored by a browser or a proxy."""
    refreshed = request.get(_REFRESHED)
    if refreshed is not None and not any(value.startswith(f"{COOKIE}=") for value in response.headers.getall(
            "Set-Cookie", [])):
        _set_cookie(request, response, *refreshed)
    if request.get(_BY_SESSION):
        response.headers["Cache-Control"] = "no-store"


app.web.web_app.on_response_prepare.append(_on_response)


# ---------------------------------------------------------------- sessions

def carries_session(request: aioweb.Request) -> bool:
    """Whether the request is to be authenticated by a console session: it has the cookie and
    no signature (a signed request is judged by its signature alone, as it always was)."""
    return COOKIE in request.cookies and HEADER_KEY_ID not in request.headers


def _token_session(request: aioweb.Request) -> sessions.Session:
    try:
        return sessions.verify(_secret(), request.cookies.get(COOKIE), kind="console")
    except sessions.SessionError as error:
        raise BadRequest(401, error.error, _SESSION_WORDS.get(error.error, error.reason)) from None


def _check_csrf(request: aioweb.Request, session_id: str) -> None:
    given = request.headers.get(CSRF_HEADER, "")
    if not given:
        raise BadRequest(403, "csrf_missing", f"a write from the console needs the {CSRF_HEADER} header of its"
                                              " session (the page sends it)")
    if not hmac.compare_digest(given.encode(), csrf_token(session_id).encode()):
        raise BadRequest(403, "csrf_mismatch", f"the {CSRF_HEADER} header is not this session's")


async def _state(session_id: str) -> dict[str, Any] | None:
    raw = await redis().get(REDIS_PREFIX + session_id)
    return json.loads(raw) if raw is not None else None


async def _end(session_id: str) -> None:
    await redis().delete(REDIS_PREFIX + session_id)


async def _refresh(request: aioweb.Request, session: sessions.Session, state: dict[str, Any],
                   now: int) -> sessions.Session:
    """A new token for the same session, from the account as it is now."""
    account = await accounts.get_account(db(), session.user_id)
    if account is None or account.disabled:
        await _end(session.session_id)
        raise BadRequest(401, "session_ended", f"operator {session.user_id} is disabled: the session has ended")
    ttl = max(1, min(_ttl_s(), (state["login_at"] + MAX_AGE_MS - now) // 1000))
    token, fresh = sessions.issue(_secret(), account.name, ttl, now_ms=now, group=account.group, kind="console",
                                  role=account.role, session_id=session.session_id)
    await redis().expire(REDIS_PREFIX + session.session_id, ttl)
    request[_REFRESHED] = (token, ttl)
    return fresh


async def session_caller(request: aioweb.Request, roles: tuple[str, ...]) -> SessionCaller:
    """The caller a console session proves, for a request that needs one of `roles`;
    BadRequest (401 no or ended session, 403 CSRF or role) otherwise."""
    session = _token_session(request)
    if request.method not in SAFE_METHODS:
        _check_csrf(request, session.session_id)
    state = await _state(session.session_id)
    if state is None or state.get("name") != session.user_id:
        raise BadRequest(401, "session_ended", "the console session has ended (logged out, or the account was"
                                               " disabled): log in again")
    now = _now()
    if now - state["login_at"] >= MAX_AGE_MS:
        await _end(session.session_id)
        raise BadRequest(401, "session_expired", f"logged in more than {MAX_AGE_MS // 3_600_000} h ago: log in again")
    if now - session.issued_at >= REFRESH_AFTER_MS:
        session = await _refresh(request, session, state, now)
    request[_BY_SESSION] = True
    if session.role not in roles:
        raise BadRequest(403, "forbidden", f"this needs the role {' or '.join(roles)}; operator {session.user_id}"
                                           f" is a {session.role}")
    return SessionCaller(key_id=f"console:{session.session_id}", role=session.role, group=session.group,
                         account=session.user_id, expires_at=session.expires_at)


def _whoami(name: str, role: str, group: str, session_id: str, expires_at: int) -> dict[str, Any]:
    return {"name": name, "role": role, "group": group, "expires_at": expires_at,
            "session_ttl_s": _ttl_s(), "csrf_token": csrf_token(session_id),
            "verifier_url": f"{settings.page_url.rstrip('/')}/verify/" if settings.page_url else None}


# ---------------------------------------------------------------- login, logout, who am I

def _tag(kind: str, value: str) -> str:
    """A keyed tag of a name or an address: who tried it, without writing it down (a name that is
    no account may be a password typed in the wrong field)."""
    return hmac.new(_secret().encode(), f"{kind}.".encode() + value.encode(), hashlib.sha256).hexdigest()[:16]


def _login_summary(request: aioweb.Request, address: str, **extra: Any) -> dict[str, Any]:
    return audit.request_summary(request, None, address=address,
                                 user_agent=request.headers.get("User-Agent", "")[:200], **extra)


def _check(password: str, account: accounts.Account | None) -> bool:
    return accounts.check_password(password, account.password_hash if account else accounts.dummy_hash())


@app.page("/ops/login")
class Login(web.View):
    async def post(self, request):
        """{name, password} -> the session (cookie) and who it is for."""
        try:
            return await self._login(request)
        except REDIS_ERRORS as error:
            # The failure counts and the sessions live in Redis: no login without it.
            return problem(503, "unavailable", f"the session store is unavailable ({error}); retry shortly",
                           headers={"Retry-After": "5"})

    async def _login(self, request):
        global _hashing
        if request.content_type != "application/json":
            return problem(415, "unsupported_media_type", "send the login as JSON (Content-Type: application/json)")
        if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
            return problem(413, "too_large", f"body over {MAX_LOGIN_BODY} bytes")
        raw = await request.read()
        if len(raw) > MAX_LOGIN_BODY:
            return problem(413, "too_large", f"body over {MAX_LOGIN_BODY} bytes")
        body = parse_json_object(raw)
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
            return problem(400, "bad_request", "name and password are required, as strings")
        if len(name) > 128 or len(password) > accounts.MAX_PASSWORD:
            return problem(400, "bad_request", f"the name or the password is too long (at most 128 and"
                                               f" {accounts.MAX_PASSWORD} characters)")
        secret = _secret()
        address = client_address(request)
        by_name, by_address = limiters()
        name_tag, address_tag = _tag("name", name), _tag("address", address)
        now = _now()
        waits = {"account name": await by_name.retry_after_ms(name_tag, now),
                 "address": await by_address.retry_after_ms(address_tag, now)}
        which, wait_ms = max(waits.items(), key=lambda item: item[1])
        if wait_ms > 0:
            seconds = -(-wait_ms // 1000)
            return problem(429, "too_many_failures", f"too many failed logins for this {which}: try again in"
                           f" {-(-seconds // 60)} min", headers={"Retry-After": str(seconds)}, retry_after_s=seconds)
        account = await accounts.get_account(db(), name) if ids.is_name(name) else None
        if _hashing is None:
            _hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        async with _hashing:
            good = await asyncio.to_thread(_check, password, account)
        if not good or account is None or account.disabled:
            now = _now()
            locked = [what for what, limiter, key in (("account name", by_name, name_tag),
                                                      ("address", by_address, address_tag))
                      if await limiter.fail(key, now)]
            actor = account.name if account is not None else "unknown"
            known = {} if account is not None else {"name_tag": name_tag}
            await audit.append(actor, "", "console.login_failed", _login_summary(request, address, **known),
                               target=actor)
            if locked:
                # One row when a lock starts (not one per refused attempt: those are not audited,
                # so that a flood cannot grow the log without bound).
                await audit.append(actor, "", "console.login_locked",
                                   _login_summary(request, address, locked=locked, **known), target=actor)
            return problem(401, "bad_login", "the name or the password is wrong")
        await by_name.clear(name_tag)
        ttl = _ttl_s()
        token, session = sessions.issue(secret, account.name, ttl, now_ms=_now(), group=account.group,
                                        kind="console", role=account.role)
        await audit.append(account.name, f"console:{session.session_id}", "console.login",
                           _login_summary(request, address, role=account.role, group=account.group),
                           target=account.name)
        await redis().set(REDIS_PREFIX + session.session_id,
                           json.dumps({"name": account.name, "login_at": session.issued_at, "address": address}),
                           ex=ttl)
        response = aioweb.json_response(_whoami(account.name, account.role, account.group, session.session_id,
                                                session.expires_at), headers={"Cache-Control": "no-store"})
        _set_cookie(request, response, token, ttl)
        return response


@app.page("/ops/logout")
class Logout(web.View):
    async def post(self, request):
        """End the session (its CSRF token needed); without a valid session, just clear the cookie."""
        response = aioweb.json_response({"status": "logged_out"})
        if COOKIE in request.cookies:
            try:
                session = _token_session(request)
            except BadRequest:
                session = None          # expired or not ours: nothing to end
            if session is not None:
                _check_csrf(request, session.session_id)
                await audit.append(session.user_id, f"console:{session.session_id}", "console.logout",
                                   _login_summary(request, client_address(request)), target=session.user_id)
                await _end(session.session_id)
        _clear_cookie(request, response)
        return response


@app.page("/ops/session")
class WhoAmI(web.View):
    async def get(self, request):
        """Who the session is for, and its CSRF token (the page asks when it opens)."""
        if not carries_session(request):
            return problem(401, "no_session", _SESSION_WORDS["no_session"])
        caller = await session_caller(request, accounts.ROLES)
        return aioweb.json_response(_whoami(caller.account, caller.role, caller.group,
                                            caller.key_id.removeprefix("console:"), caller.expires_at))


# ---------------------------------------------------------------- the page

def _file(name: str) -> aioweb.FileResponse:
    return aioweb.FileResponse(FILES[name], headers=PAGE_HEADERS)


@app.page("/ops/console")
class ConsoleRedirect(web.View):
    async def get(self, request):
        return aioweb.Response(status=302, headers={"Location": "/ops/console/"})


@app.page("/ops/console/")
class ConsolePage(web.View):
    async def get(self, request):
        return _file("console.html")


@app.page("/ops/console/{name}")
class ConsoleFile(web.View):
    async def get(self, request, name: str):
        if name not in FILES or name == "console.html":
            return problem(404, "not_found", f"no console file {name[:64]!r}")
        return _file(name)
