"""How implementations are declared, loaded and called: registry, loading, the caller."""
