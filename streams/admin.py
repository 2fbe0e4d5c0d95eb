"""`crash-admin`: operational commands.

    crash-admin topics              create the game topics (idempotent)
    crash-admin demo-channels       create the demo channels through the operator API
    crash-admin watch               print a live summary until interrupted (the demo's screen)
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings, get_settings
from streams.topics import ALL_TOPICS


async def create_topics(settings: Settings, names: tuple[str, ...] = ALL_TOPICS) -> list[str]:
    """Create missing game topics with the configured partition count; returns those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(name) for name in names]
        missing = [NewTopic(name=t, num_partitions=settings.partitions,
                            replication_factor=settings.replication) for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in missing]
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("topics", help="create the game topics")
    sub.add_parser("demo-channels", help="create the demo channels")
    watch = sub.add_parser("watch", help="print a live summary of the demo")
    watch.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "topics":
        created = asyncio.run(create_topics(settings))
        print(f"topics: {len(created)} created" + (f" ({', '.join(created)})" if created else ""))
        return 0
    if args.command == "demo-channels":
        from streams.demo import create_demo_channels
        return asyncio.run(create_demo_channels(settings))
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
