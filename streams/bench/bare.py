"""The benchmark's baselines, each its own process (`python -m streams.bench.bare ...`):

- `kafka`: the bare aiokafka consume -> produce loop on the same broker: N JSON messages are put
  on an input topic first, then one process reads them in batches, parses each, produces a JSON
  answer per message and waits for the acknowledgements, as a pipeline hop does with nothing
  else (no tables, no Faust). DESIGN section 14's headline ratio is against this.
- `http`: a bare aiohttp server doing the jackpot API's request checks and nothing else: the same
  HMAC verification with the nonce claimed in the same Redis, the JSON body parsed, a JSON answer.
  The contribute endpoint's figures are read against it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

__all__ = ["main"]


async def kafka_loop(n: int, out: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.admin import create_topics
    from streams.settings import get_settings
    settings = get_settings()
    await create_topics(settings, ("bench.in", "bench.out"))
    source, sink = settings.topic("bench.in"), settings.topic("bench.out")
    # The same linger as the pipeline's producers, so that the ratio compares like with like.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=settings.producer_linger_ms,
                                acks="all")
    await producer.start()
    payload = {"type": "PlaceBet", "event_id": "", "channel_id": "bench-1", "ts": 0, "api_order_no": "",
               "user_id": "u1", "amount": 100, "currency": "EUR", "auto_cashout_x100": 200, "gateway_id": "gw-bench"}
    for i in range(n):
        payload["event_id"] = payload["api_order_no"] = f"o-{i}"
        payload["ts"] = int(time.time() * 1000)
        await producer.send(source, json.dumps(payload).encode(), key=f"k{i % 8}".encode())
    await producer.flush()
    consumer = AIOKafkaConsumer(source, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    cpu0, got, started = sum(os.times()[:2]), 0, None
    while got < n:
        batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
        if started is None and batches:
            started = time.perf_counter()
        futures = []
        for messages in batches.values():
            for m in messages:
                data = json.loads(m.value)
                answer = {"type": "CommandReply", "command_id": data["event_id"], "status": "accepted",
                          "channel_id": data["channel_id"], "ts": data["ts"]}
                futures.append(await producer.send(sink, json.dumps(answer).encode(), key=m.key))
                got += 1
        if futures:
            await asyncio.gather(*futures)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    result = {"messages": n, "elapsed_s": elapsed, "per_s": n / elapsed if elapsed else 0,
              "cpu_s": sum(os.times()[:2]) - cpu0}
    await consumer.stop()
    await producer.stop()
    with open(out, "w") as f:
        json.dump(result, f)


def http_server(port: int) -> None:
    from aiohttp import web

    from streams.cache import redis_client
    from streams.settings import get_settings
    from web.http import parse_json_object
    from web.signing import RedisNonceStore, SignatureError, Verifier
    settings = get_settings()
    verifier_key: web.AppKey[Verifier] = web.AppKey("verifier")

    async def contribute(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            await request.app[verifier_key].verify(request.method, request.path_qs, request.headers, raw)
        except SignatureError as error:
            return web.json_response({"error": "unauthorized", "reason": str(error)}, status=401)
        body = parse_json_object(raw)
        return web.json_response({"status": "accepted", "jackpotId": request.match_info["jackpot_id"],
                                  "contributionId": body.get("contributionId")})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def lifecycle(app: web.Application):
        redis = redis_client(settings.redis_url)
        app[verifier_key] = Verifier(settings.api_keys, RedisNonceStore(redis))
        yield
        await redis.aclose()

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/jackpot/{jackpot_id}/contribute", contribute)
    app.router.add_get("/v1/health", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench.bare")
    parser.add_argument("mode", choices=("kafka", "http"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--out", default="")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "kafka":
        asyncio.run(kafka_loop(args.n, args.out))
    else:
        http_server(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
