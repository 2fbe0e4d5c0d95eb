"""The Faust app, its topics and event records, and the shared rules (money, fairness)."""
