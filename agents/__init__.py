"""The services of the pipeline, one module each (DESIGN section 3).

Importing this package registers nothing: `register()` imports the modules that declare Faust
agents and timers on streams.app.app (the workers call it), so that a module used elsewhere
(the operator views use agents.payout_outbox's queries) brings no agent along.
"""
from __future__ import annotations


def register() -> None:
    from agents import (  # noqa: F401
        cashout_service,
        commands,
        jackpot_notifier,
        jackpot_service,
        sink,
    )
