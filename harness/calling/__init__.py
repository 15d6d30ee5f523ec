"""How implementations are declared, loaded and called: registry, loading, the caller and its sandbox
processes (sandbox in the harness, worker inside each process, protocol between them, frameworks)."""
