"""`crash-admin`: operational commands.

    crash-admin topics              create the game topics and table changelogs (idempotent)
    crash-admin demo-channels       create the demo channels through the operator API
    crash-admin watch               print a live summary until interrupted (the demo's screen)
    crash-admin demo-game           the demo's second game: a slot machine feeding jackpots over REST
    crash-admin webhook-receiver    print the jackpots' near-cap notices (the demo's webhook)
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings, get_settings
from streams.topics import ALL_TOPICS


def changelog_topics(settings: Settings) -> list[str]:
    """The changelog topic of every table, named as Faust names them for this app id."""
    import tables.state  # noqa: F401  (declares the tables on the app)
    from streams.app import app
    return [f"{settings.app_id}-{name}-changelog" for name in sorted(app.tables)]


async def create_topics(settings: Settings, names: tuple[str, ...] = ALL_TOPICS) -> list[str]:
    """Create the missing game topics and table changelogs; returns those created.

    Changelogs are created here, before any worker starts, rather than left to Faust: a worker
    that creates them itself can see them with 0 partitions in its first metadata snapshot and
    then fails its first table write with PartitionsMismatch.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {settings.topic(name): {} for name in names}
        wanted.update({name: {"cleanup.policy": "compact"} for name in changelog_topics(settings)})
        missing = [NewTopic(name=topic, num_partitions=settings.partitions,
                            replication_factor=settings.replication, topic_configs=config)
                   for topic, config in wanted.items() if topic not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            await _wait_until_visible(admin, [t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()


async def _wait_until_visible(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Wait until the broker's metadata shows every partition of the new topics (KRaft answers
    create_topics before its metadata has them; a client reading it then sees 0 partitions)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        if all(t["error_code"] == 0 and t["partitions"] for t in described):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_s:.0f} s: {names}")
        await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("topics", help="create the game topics")
    sub.add_parser("demo-channels", help="create the demo channels")
    watch = sub.add_parser("watch", help="print a live summary of the demo")
    watch.add_argument("--every", type=float, default=5.0)
    game = sub.add_parser("demo-game", help="a slot machine feeding the demo jackpots over REST")
    game.add_argument("--spins", type=float, default=4.0, help="spins per second")
    receiver = sub.add_parser("webhook-receiver", help="print near-cap notices")
    receiver.add_argument("--port", type=int, default=8095)
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "topics":
        created = asyncio.run(create_topics(settings))
        print(f"topics: {len(created)} created" + (f" ({', '.join(created)})" if created else ""))
        return 0
    if args.command == "demo-channels":
        from streams.demo import create_demo_channels
        return asyncio.run(create_demo_channels(settings))
    if args.command in ("demo-game", "webhook-receiver"):
        from streams import demo_jackpots
        job = (demo_jackpots.run_demo_game(settings, args.spins) if args.command == "demo-game"
               else demo_jackpots.run_webhook_receiver(settings, args.port))
        try:
            asyncio.run(job)
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "watch":
        from streams.demo import watch
        try:
            asyncio.run(watch(settings, args.every))
        except KeyboardInterrupt:
            pass
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
