"""`crash-ops worker -l info`: the operator views (web/operator_views.py, web/jackpot_views.py) and
the operators' console (web/console.py, /ops/console/) in a Faust process of their own.

The views read MySQL and send commands to the game's topics; they never share an event loop (or
a process) with the agents, so a flood of operator requests can slow only this process, never a
term, a bet or a cashout. Any number of them can run (behind one Service); each has the Faust
app id `<CRASH_APP_ID>-ops`, so it takes no part in the workers' consumer group.
"""
from __future__ import annotations

import logging
import os


def main() -> None:
    os.environ["CRASH_PROCESS_ROLE"] = "ops"       # before streams.app builds the Faust app
    import web.console  # noqa: F401  (the operators' console: login, sessions, the page)
    import web.jackpot_views  # noqa: F401  (registers the jackpot operator views)
    import web.metrics_view  # noqa: F401
    import web.operator_views  # noqa: F401  (registers the operator views)
    from streams.app import app

    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    app.main()
