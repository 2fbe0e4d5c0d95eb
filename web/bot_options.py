"""`crash-bots`' command line (web/bots.py): the options, how they are read, and the API key a
mode signs with; ConfigurationError is what the operator must fix before the bots start.

Apart from the players because none of it runs: it is read once, before the event loop starts.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from streams.settings import Settings


class ConfigurationError(Exception):
    """Something the operator must fix before the bots can start (a missing key...); the wallet
    refusing our key, found while running, is reported as `Bots.fatal` with the same exit code."""


@dataclass(frozen=True)
class Options:
    players: int
    rate: float
    channels: tuple[str, ...]
    duration: float | None
    mode: str
    gateway: str
    wallet: str
    report_json: str | None
    seed: int
    quiet: bool
    balance: int
    refill_below: int
    connections: int
    drain: float
    record_bets: bool
    push: str


def parse_args(argv: list[str] | None, settings: Settings) -> Options:
    parser = argparse.ArgumentParser(prog="crash-bots", description="Bot players: load for the crash game's bet API.")
    parser.add_argument("--players", type=int, required=True, help="number of bot players")
    parser.add_argument("--rate", type=float, required=True,
                        help="bets per second over all channels while betting windows are open")
    parser.add_argument("--channels", default="", help="comma-separated channel ids (default: all the gateway knows)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until SIGINT/SIGTERM)")
    parser.add_argument("--mode", choices=("seamless", "transfer"), default="seamless")
    parser.add_argument("--gateway", default=f"http://127.0.0.1:{settings.gateway_port}", help="bet API base URL")
    parser.add_argument("--wallet", default=settings.wallet_url, help="wallet base URL (seamless mode)")
    parser.add_argument("--report-json", default=None, help="also write the final summary to this file")
    parser.add_argument("--seed", type=int, default=1, help="player ids and random choices (bot-<seed>-<i>)")
    parser.add_argument("--quiet", action="store_true", help="no report line every 5 s")
    parser.add_argument("--balance", type=int, default=1_000_000,
                        help="seamless mode: starting balance in minor units of every player and currency")
    parser.add_argument("--refill-below", type=int, default=None,
                        help="seamless mode: fund a player whose balance is below this (default: balance / 10)")
    parser.add_argument("--connections", type=int, default=256, help="HTTP connection limit")
    parser.add_argument("--drain", type=float, default=5.0,
                        help="seconds to let requests in flight finish after the stop")
    parser.add_argument("--push", default="",
                        help="push gateway base URL (e.g. http://127.0.0.1:8082): follow the terms over its "
                             "WebSocket instead of polling the bet API")
    parser.add_argument("--record-bets", action="store_true",
                        help="list every accepted bet (channel, api_order_no) in the --report-json file")
    args = parser.parse_args(argv)
    if args.players < 1 or args.rate <= 0:
        parser.error("--players must be >= 1 and --rate > 0")
    if args.balance < 1 or args.connections < 1:
        parser.error("--balance and --connections must be positive")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    refill_below = args.refill_below if args.refill_below is not None else args.balance // 10
    channels = tuple(c.strip() for c in args.channels.split(",") if c.strip())
    return Options(players=args.players, rate=args.rate, channels=channels, duration=args.duration, mode=args.mode,
                   gateway=args.gateway.rstrip("/"), wallet=args.wallet, report_json=args.report_json,
                   seed=args.seed, quiet=args.quiet, balance=args.balance, refill_below=refill_below,
                   connections=args.connections, drain=args.drain, record_bets=args.record_bets,
                   push=args.push.rstrip("/"))


def key_for_role(api_keys: dict[str, tuple[str, str]], role: str, preferred: str) -> tuple[str, str]:
    """(key_id, secret) of the key with `role`; `preferred` wins if several have it."""
    ids = sorted(key_id for key_id, (_, key_role) in api_keys.items() if key_role == role)
    if not ids:
        raise ConfigurationError(
            f"no key with role {role!r} in CRASH_API_KEYS (key_id:secret:role,...); "
            f"have: {', '.join(f'{k}:{r}' for k, (_, r) in sorted(api_keys.items())) or 'none'}")
    key_id = preferred if preferred in ids else ids[0]
    return key_id, api_keys[key_id][0]
