"""Modules that misbehave while they are imported; each also defines a sound cross_entropy."""
