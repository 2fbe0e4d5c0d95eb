"""/metrics (Prometheus) on a Faust process's web server: the workers' and the operator views'."""
from __future__ import annotations

from aiohttp import web as aioweb
from faust import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.app import app


@app.page("/metrics")
class Metrics(web.View):
    async def get(self, request):
        return aioweb.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
