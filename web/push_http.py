"""The push gateway's plain HTTP (web/push.py), apart from its WebSocket rooms: the page's and
the verifier's files, the public proof of an ended term (from a view, else from MySQL), a
channel's view as JSON, the page's config, health and metrics.

Apart from the gateway because these only read its state and write to no room: each answers
one request, while web/push.py follows Kafka and feeds the sockets.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from web.http import problem
from web.push_rooms import now_ms

if TYPE_CHECKING:
    from web.push import Push

__all__ = ["add_routes", "proof_of_row"]

log = logging.getLogger("crash.push")

STATIC = Path(__file__).resolve().parent / "static"
TERM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_PUBLIC = {"Cache-Control": "public, max-age=60"}


def add_routes(app: web.Application, push: Push) -> None:
    http = PushHttp(push)
    app.router.add_get("/", to_page)
    app.router.add_get("/play/", _page("play.html"))
    app.router.add_get("/verify/", _page("verify.html"))
    app.router.add_static("/static/", STATIC, append_version=False)
    app.router.add_get("/play/config.json", http.page_config)
    app.router.add_get("/v1/proofs/{term_id}", http.proof)
    app.router.add_get("/v1/views/{channel_id}", http.channel_view)
    app.router.add_get("/v1/health", http.health)
    app.router.add_get("/metrics", metrics)


class PushHttp:
    """The handlers that read the gateway's views and state."""

    def __init__(self, push: Push) -> None:
        self.push = push

    async def proof(self, request: web.Request) -> web.Response:
        """The published fairness data of one ended term (anything to recompute its crash point)."""
        term_id = request.match_info["term_id"]
        if not TERM_ID.fullmatch(term_id):
            return problem(400, "bad_request", "not a term id")
        for view in self.push.views.values():
            proof = view.proofs.get(term_id)
            if proof is not None and proof.get("prev_hash") and proof.get("terminator"):
                return web.json_response(proof, headers=_PUBLIC)
        try:
            async with self.push.db.connect() as conn:
                row = (await conn.execute(text("SELECT * FROM crash_term WHERE term_id = :t"), {"t": term_id})).first()
                if row is not None and row.revealed_hash:
                    chain_rows = await conn.execute(text(
                        "SELECT chain_no, length, terminator, salt FROM fairness_chain WHERE channel_id = :c"),
                        {"c": row.channel_id})
                    chains = {str(c.chain_no): {"terminator": c.terminator, "salt": c.salt, "length": c.length}
                              for c in chain_rows}
                    return web.json_response(proof_of_row(row._mapping, chains), headers=_PUBLIC)
        except Exception as error:
            log.warning("proof of %s from MySQL: %s", term_id, error)
            return problem(503, "unavailable", "the term history is not reachable right now; try again")
        if row is not None:
            return problem(409, "not_revealed", f"term {term_id} has not crashed yet: its proof is not published")
        return problem(404, "not_found", f"no ended term {term_id}")

    async def channel_view(self, request: web.Request) -> web.Response:
        view = self.push.views.get(request.match_info["channel_id"])
        if view is None:
            return problem(404, "not_found", "no such channel")
        return web.json_response({**view.snapshot(), "server_time": now_ms(),
                                  "jackpots": {j: self.push.jackpot(j).public() for j in view.jackpot_ids}})

    async def page_config(self, request: web.Request) -> web.Response:
        return web.json_response({"api_url": self.push.settings.page_api_url.rstrip("/"),
                                  "channels": sorted(cid for cid, v in self.push.views.items()
                                                     if v.config is not None)})

    async def health(self, request: web.Request) -> web.Response:
        if not self.push.ready.is_set():
            return problem(503, "starting", "catching up with Kafka")
        return web.json_response({"status": "ok", "clients": self.push.rooms.clients, "channels": len(self.push.views)})


def proof_of_row(row: Any, chains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config = row["config"]
    config = json.loads(config) if isinstance(config, str) else config
    chain = chains.get(str(row["chain_no"])) or {}
    return {"term_id": row["term_id"], "channel_id": row["channel_id"], "seq": row["seq"], "chain_no": row["chain_no"],
            "chain_index": row["chain_index"], "prev_hash": row["prev_hash"], "revealed_hash": row["revealed_hash"],
            "salt": chain.get("salt"), "terminator": chain.get("terminator"), "hmac_digest": row["hmac_digest"],
            "crash_x100": row["crash_x100"], "edge_bps": config.get("edge_bps", 100),
            "max_multiple_x100": config.get("max_multiple_x100"), "aborted": bool(row["aborted"])}


def _page(name: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})
    return handler


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/play/")


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
