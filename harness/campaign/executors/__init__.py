"""Executors: where a campaign's cells run. The engine is the same for every one of them.

An executor takes the campaign's settings and the cells still to run and yields one
``CellResult`` per cell as each ends, in any order: finished, partial (a stop request
reached it) or failed (a tool error, such as a worker that died twice). Three ship:

- ``InProcess``: the cells one after another in this process (the default);
- ``ProcessPool``: a pool of local worker processes (``--workers N``);
- ``DaskExecutor``: any Dask cluster (``--executor dask [--scheduler ADDRESS]``; without
  an address, a ``LocalCluster`` on this machine), from the ``cluster`` extra.

Each cell is one task, computed by ``harness.campaign.cells.run_cell`` from the settings
alone, so every executor writes the same records. A new executor subclasses ``Executor``.
"""

from __future__ import annotations

from harness.campaign.executors.base import MAX_ATTEMPTS, STOP_GRACE, Executor, InProcess, make_executor

__all__ = ["EXECUTORS", "MAX_ATTEMPTS", "STOP_GRACE", "Executor", "InProcess", "make_executor"]

EXECUTORS = ("inprocess", "pool", "dask")
