"""Test helpers for the push gateway and the player page: start `crash-push` next to a
Pipeline, get a player's session token the way an operator's server does, and a WebSocket
client that records every frame (waiting on conditions, never sleeping)."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from harness import Pipeline, Process, free_port, wait_for


class PushGateway:
    def __init__(self, pipe: Pipeline, name: str = "push", buffer_bytes: int | None = None) -> None:
        self.pipe, self.name = pipe, name
        self.port = free_port()
        self.env = {"CRASH_PUSH_PORT": str(self.port), "CRASH_PAGE_API_URL": pipe.gateway_url,
                    "CRASH_PAGE_URL": f"http://127.0.0.1:{self.port}"}
        if buffer_bytes is not None:
            self.env["CRASH_PUSH_CLIENT_BUFFER"] = str(buffer_bytes)
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = self.pipe.start_service(self.name, "crash-push", self.env)
        await self.wait_ready()

    async def wait_ready(self, timeout: float = 60) -> None:
        assert self.pipe.http is not None

        async def ready() -> bool:
            try:
                async with self.pipe.http.get(f"{self.url}/v1/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError):
                return False
        await wait_for(ready, timeout, f"{self.name} to be ready")

    async def get(self, path: str) -> tuple[int, Any]:
        assert self.pipe.http is not None
        async with self.pipe.http.get(self.url + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def wait_channel(self, channel_id: str, timeout: float = 60) -> dict[str, Any]:
        async def known() -> Any:
            status, body = await self.get(f"/v1/views/{channel_id}")
            return body if status == 200 and body.get("config") else None
        return await wait_for(known, timeout, f"{self.name} to know channel {channel_id}")


async def session_token(pipe: Pipeline, user_id: str, **extra: Any) -> dict[str, Any]:
    """What the operator's server does: a signed request (role game) for a player's token."""
    status, body = await pipe.api("POST", "/v1/sessions", {"user_id": user_id, **extra})
    assert status == 200, (status, body)
    return body


async def page_call(pipe: Pipeline, method: str, path: str, token: str | None, body: Any = None
                    ) -> tuple[int, Any]:
    """A page action on the bet API, as the browser sends it (Bearer token, no HMAC)."""
    assert pipe.http is not None
    headers = {"Content-Type": "application/json", "Origin": "http://page.example"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    async with pipe.http.request(method, pipe.gateway_url + path, data=data, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=30)) as resp:
        assert resp.headers.get("Access-Control-Allow-Origin") in ("*", "http://page.example"), dict(resp.headers)
        return resp.status, await resp.json(content_type=None)


class WsClient:
    """One WebSocket client of the push gateway; every frame is kept with its arrival time."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url, token
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.closed: tuple[int | None, str] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession()
        ws = await self._session.ws_connect(self.url, autoping=True, max_msg_size=0)
        await ws.send_str(json.dumps({"t": "hello", **({"token": self.token} if self.token else {})}))
        self._task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.frames.append((time.time() * 1000, json.loads(message.data)))
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR):
                break
        self.closed = (ws.close_code, str(ws.exception() or ""))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._session is not None:
            await self._session.close()

    def ops(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [op for _, f in self.frames if f["t"] == "delta" for op in f["ops"] if kind is None or op["k"] == kind]

    async def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        async def found() -> Any:
            return check()
        return await wait_for(found, timeout, what, every=0.05)

    async def hello(self, timeout: float = 30) -> dict[str, Any]:
        return await self.wait(lambda: next((f for _, f in self.frames if f["t"] in ("hello", "error")), None),
                               timeout, "the snapshot")
