"""agents/bet_service.OrderIndex without Kafka: each player's live bets in a term (the
max_bets_per_user limit) and the orders a recorded term prunes, kept as bets are decided and
rebuilt from the orders table alone after a rebalance (the real limit end to end:
tests/test_bets.py)."""
from __future__ import annotations

from agents import bet_service
from agents.bet_service import OrderIndex
from tables import Order


def order(no: str, user: str = "u1", term: str = "t1", status: str = "placed", group: int = 1) -> Order:
    return Order(api_order_no=no, channel_id="c", user_id=user, amount=100, currency="EUR", bet_type="manual",
                 received_at=1, command_id=f"cmd-{no}", status=status, term_id=term, group=group)


def test_live_bets_count_placed_orders_of_the_term_only():
    index = OrderIndex()
    for o in (order("a"), order("b"), order("r", status="rejected"), order("x", user="u2"),
              order("old", term="t0", group=0)):
        index.add(f"c/{o.api_order_no}", o)
    assert set(index.user_orders("c", "t1", "u1")) == {"a", "b"}
    assert index.user_orders("c", "t1", "u2") == ("x",)
    assert index.user_orders("c", "t0", "u1") == ("old",)
    index.cancelled(order("a"))
    assert index.user_orders("c", "t1", "u1") == ("b",)


def test_the_index_rebuilt_from_the_table_is_the_index_kept_by_the_decisions(monkeypatch):
    decided = [order("a"), order("b", status="cancelled"), order("c"), order("r", status="rejected", group=2),
               order("d", user="u2", term="t2", group=2)]
    kept = OrderIndex()
    for o in decided:
        kept.add(f"c/{o.api_order_no}", order(o.api_order_no, o.user_id, o.term_id, "placed", o.group)
                 if o.status == "cancelled" else o)
        if o.status == "cancelled":
            kept.cancelled(o)
    monkeypatch.setattr(bet_service, "orders", {f"c/{o.api_order_no}": o for o in decided})
    rebuilt = OrderIndex.of_table()
    assert rebuilt.groups == kept.groups == {"c": {1: ["c/a", "c/b", "c/c"], 2: ["c/r", "c/d"]}}
    assert rebuilt.live == {k: v for k, v in kept.live.items()}
    assert set(rebuilt.user_orders("c", "t1", "u1")) == {"a", "c"}


def test_pruning_a_term_forgets_its_live_bets():
    index = OrderIndex()
    index.add("c/a", order("a"))
    index.add("c/n", order("n", term="t2", group=2))
    index.pruned(order("a"))
    assert index.user_orders("c", "t1", "u1") == ()
    assert index.user_orders("c", "t2", "u1") == ("n",)
