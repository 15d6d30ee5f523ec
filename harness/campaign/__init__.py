"""Campaigns: an audit's (dtype, regime) cells run on an executor, checkpointed, resumed, merged.

``engine`` runs a campaign (``audit``, ``run_audit``, ``resume_audit``); ``settings``
holds everything that affects its records; ``cells`` runs one cell anywhere;
``executors`` hands cells to this process, a process pool or a Dask cluster; ``state``
assembles their results as a single run writes them; ``integrity`` hashes and checks
folders; ``lock`` keeps one writer per folder; ``interrupts`` turns Ctrl-C and SIGTERM
into a stop request checked between cases; ``report`` writes folders; ``merge``
combines shards strictly; ``speed`` is ``bench --executors``.

This package's ``__init__`` imports nothing: ``interrupts`` is imported by the search and
by worker processes before anything heavy.
"""
