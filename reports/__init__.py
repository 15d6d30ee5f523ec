"""Statistics and report files built from per-case records."""
