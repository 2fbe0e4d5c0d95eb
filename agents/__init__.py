"""The services of the pipeline, one module each (DESIGN section 3). Importing this package
registers their Faust agents and timers on streams.app.app."""
from agents import cashout_service, commands, jackpot_notifier, jackpot_service, refund_service, sink  # noqa: F401
