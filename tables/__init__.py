"""The pipeline's state: the Faust tables (tables/state.py) and the secret stores
(tables/chain_store.py, tables/jackpot_secrets.py).

`from tables import channels` works as always; the Faust tables are declared on the app the
first time one of them is asked for (PEP 562), not by importing this package: the operator
views' process (crash-ops) uses the secret stores and must not declare, recover or consume a
single table.
"""
from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("tables.state"), name)
