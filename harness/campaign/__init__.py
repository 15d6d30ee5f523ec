"""Campaigns: an audit's (dtype, regime) cells run on an executor, checkpointed, resumed, merged.

``engine`` runs a campaign (``audit``, ``run_audit``, ``resume_audit``); ``settings``
holds everything that affects its records; ``cells`` runs one cell anywhere;
``executors`` hands cells to this process, a process pool or a Dask cluster; ``state``
assembles their results as a single run writes them; ``integrity`` hashes and checks
folders; ``lock`` keeps one writer per folder; ``report`` writes folders; ``merge``
combines shards strictly; ``speed`` is ``bench --executors``. Ctrl-C and SIGTERM are stop
requests checked between cases (``harness.interrupts``).

This package's ``__init__`` imports nothing: worker processes import it before anything heavy.
"""
