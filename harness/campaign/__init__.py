"""Campaigns: an audit's cells run, checkpointed, resumed, pooled and merged into one report.

``engine`` runs a campaign (``audit``, ``run_audit``, ``resume_audit``); ``settings``
holds everything that affects its records; ``report`` writes folders; ``merge``
combines shards; ``pool`` runs cells in worker processes.
"""
