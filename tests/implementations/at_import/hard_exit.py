"""Calls os._exit(4) while it is imported."""

import os

os._exit(4)


def cross_entropy(logits, targets):  # never reached
    raise AssertionError
