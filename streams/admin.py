"""`crash-admin`: operational commands.

    crash-admin topics              create the game topics and table changelogs (idempotent)
    crash-admin demo-channels       create the demo channels through the operator API
    crash-admin watch               print a live summary until interrupted (the demo's screen)
    crash-admin demo-game           the demo's second game: a slot machine feeding jackpots over REST
    crash-admin webhook-receiver    print the jackpots' near-cap notices (the demo's webhook)
    crash-admin operator add NAME --role admin|reader [--group G] [--replace]
                                    an operators' console account (password from stdin, no echo)
    crash-admin operator list | disable NAME | enable NAME
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


def read_password(prompt: str = "password: ") -> str:
    """The new password: asked twice without echo on a terminal, else one line of stdin (scripts,
    `./stack`), never from the command line (it would stay in the shell's history and in `ps`)."""
    import getpass
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise SystemExit("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def operator_command(settings: Settings, args: argparse.Namespace) -> int:
    """`crash-admin operator ...`: each change of an account is a row of the audit log (actor
    `cli:<OS user>`) before it is made."""
    import getpass

    from sql.db import make_engine
    from streams.audit import AuditLog
    from web import accounts as A
    engine = make_engine(settings.db_url, pool_size=1)
    actor = f"cli:{getpass.getuser()}"[:128]
    try:
        if args.action == "list":
            for account in await A.list_accounts(engine):
                print(f"{account.name}\t{account.role}\t{account.group or '*'}"
                      + ("\tdisabled" if account.disabled else ""))
            return 0
        if args.action in ("disable", "enable"):
            if await A.get_account(engine, args.name) is None:
                print(f"no operator {args.name}", file=sys.stderr)
                return 1
            await AuditLog(engine).append(actor, "", f"operator.{args.action}", {"name": args.name}, target=args.name)
            await A.set_disabled(engine, args.name, args.action == "disable")
            print(f"operator {args.name} {args.action}d")
            return 0
        try:
            A.check_account_fields(args.name, args.role, args.group)
            password_hash = A.hash_password(read_password())
            existing = await A.get_account(engine, args.name)
            if existing is not None and not args.replace:
                raise A.AccountError(f"operator {args.name} exists (--replace sets a new password, role and group)")
            await AuditLog(engine).append(actor, "", "operator.replace" if existing else "operator.add",
                                          {"name": args.name, "role": args.role, "group": args.group},
                                          target=args.name)
            done = await A.add_account(engine, args.name, args.role, args.group, password_hash, replace=args.replace)
        except A.AccountError as error:
            print(f"crash-admin operator add: {error}", file=sys.stderr)
            return 2
        print(f"operator {args.name} {done} (role {args.role}, group {args.group or 'every group'})")
        return 0
    finally:
        await engine.dispose()


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
    operator = sub.add_parser("operator", help="the operators' console accounts")
    accounts = operator.add_subparsers(dest="action", required=True)
    add = accounts.add_parser("add", help="add an account; the password is read from stdin (not echoed)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["admin", "reader"])
    add.add_argument("--group", default="", help="the operator group it acts on (default: every group)")
    add.add_argument("--replace", action="store_true", help="an existing account gets this password, role, group")
    accounts.add_parser("list", help="every account (never a password)")
    for action in ("disable", "enable"):
        accounts.add_parser(action, help=f"{action} an account").add_argument("name")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "operator":
        return asyncio.run(operator_command(settings, args))
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
