"""Calls sys.exit(3) while it is imported."""

import sys

sys.exit(3)


def cross_entropy(logits, targets):  # never reached
    raise AssertionError
