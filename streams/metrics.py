"""Prometheus metrics of the pipeline: one place for their names (scraped at /metrics)."""
from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram


@functools.cache
def child(metric, *label_values: str):
    """`metric.labels(*label_values)`, looked up once: the hot paths count every bet, and
    prometheus_client's labels() checks and converts its arguments on every call (~3 % of a
    worker's samples at 1,400 bets/s, crash-bench --profile)."""
    return metric.labels(*label_values)

EVENTS_HANDLED = Counter("crash_events_handled_total", "Events handled by an agent", ["consumer"])
BATCH_SECONDS = Histogram("crash_batch_seconds", "Time to handle one batch, including Kafka acks",
                          ["consumer"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
SKIPPED_OFFSETS = Counter("crash_skipped_offsets_total",
                          "Messages the consumer skipped that an agent found and read again", ["consumer"])
DEAD_LETTERS = Counter("crash_dead_letters_total", "Undecodable messages sent to game.dlq", ["consumer", "topic"])

TERM_TRANSITIONS = Counter("crash_term_transitions_total", "Term state changes", ["state"])
TERMS_RECOVERED = Counter("crash_terms_recovered_total", "Terms whose crash was processed late (takeover)")
TERM_LAG_MS = Histogram("crash_term_transition_lag_ms", "Processing time minus scheduled time of a transition",
                        buckets=(5, 10, 25, 50, 100, 150, 250, 500, 1000, 5000, 30000))
TICK_LATENESS_MS = Histogram("crash_tick_lateness_ms", "When the flight clock sent a TermTick minus its slot",
                             buckets=(1, 2.5, 5, 10, 20, 50, 100, 250, 1000))
COMMAND_STALLS = Counter("crash_command_stalls_total",
                         "Workers stopped by the watchdog: a channel's commands were not consumed")
CHAIN_EXHAUSTED = Counter("crash_chain_exhausted_total", "Terms not created because no next chain is published",
                          ["channel"])

ORDERS_PRUNED = Counter("crash_orders_pruned_total", "Orders dropped from the pipeline's index once MySQL has them")
BET_DECISIONS = Counter("crash_bet_decisions_total", "Bet commands by outcome", ["outcome", "reason"])
CASHOUTS = Counter("crash_cashouts_total", "Bets cashed out", ["mode"])
CASHOUT_REFUSALS = Counter("crash_cashout_refusals_total", "Cashout requests refused", ["reason"])
TERMS_SETTLED = Counter("crash_terms_settled_total", "Terms settled by the cashout service", ["outcome"])

SINK_ROWS = Counter("crash_sink_events_total", "Events written to MySQL by the sink", ["type"])
SINK_RETRIES = Counter("crash_sink_retries_total", "Sink batches retried after a database error")

PAYOUTS = Counter("crash_payouts_total", "Payout orders by final outcome", ["kind", "outcome"])
PAYOUT_ATTEMPTS = Counter("crash_payout_attempts_total", "Wallet credit attempts", ["outcome"])
PAYOUTS_FAILED = Gauge("crash_payouts_failed", "Outbox rows in status failed (need an operator)")
PAYOUT_LATENCY = Histogram("crash_payout_latency_seconds", "From outbox row creation to wallet ack",
                           buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))

# Jackpots (names from the jackpot seed): contributions, awards, values, latency, reconciliation.
JACKPOT_CONTRIBUTIONS = Counter("jackpot_contribute_total", "Contributions applied to a pool",
                                ["jackpot_id", "source"])
JACKPOT_CONTRIBUTED = Counter("jackpot_contributed_minor_units_total",
                              "Money contributed to a pool, in minor units (for the top games)",
                              ["jackpot_id", "game_id"])
JACKPOT_REFUSED = Counter("jackpot_contributions_refused_total", "Contributions a pool refused",
                          ["jackpot_id", "reason"])
JACKPOT_AWARDS = Counter("jackpot_award_total", "Jackpot hits (locked-in awards)", ["jackpot_id", "trigger"])
JACKPOT_VALUE = Gauge("jackpot_current_value", "A pool's value in whole minor units (on the worker that owns it)",
                      ["jackpot_id", "currency"])
JACKPOT_LATENCY = Histogram("jackpot_processing_latency", "From a contribution's source time to its pool update",
                            ["source"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
JACKPOT_VIEW_ERRORS = Counter("jackpot_view_errors_total", "Jackpot views that could not be written to Redis")
JACKPOT_RECONCILED_BPS = Gauge("jackpot_reconciliation_difference_bps",
                               "Last reconciliation: |pool - (seeds + contributions - awards + compensations)|,"
                               " in bps of the expected pool", ["jackpot_id"])
JACKPOT_RECONCILED_MINOR = Gauge("jackpot_reconciliation_difference_minor_units",
                                 "Last reconciliation: pool minus expected, in minor units", ["jackpot_id"])
JACKPOT_NOTICES = Counter("jackpot_notices_total", "Near-cap webhook deliveries by outcome", ["outcome"])
