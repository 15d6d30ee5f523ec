"""JAX implementations: each takes JAX arrays (N, C) and (N,) and returns JAX arrays (framework auto-detected)."""

import jax
import jax.numpy as jnp


def _picked(x, targets):
    return jnp.take_along_axis(x, targets[:, None].astype(jnp.int32), axis=1)[:, 0]


def stable(logits, targets):
    """(max - target logit) + log(sum(exp(x - max))), accumulated in float32 for float16 and bfloat16."""
    wide = logits.astype(jnp.float32) if logits.dtype in (jnp.float16, jnp.bfloat16) else logits
    m = wide.max(axis=1)
    shifted_sum = jnp.exp(wide - m[:, None]).sum(axis=1)
    return ((m - _picked(wide, targets)) + jnp.log(shifted_sum)).astype(logits.dtype)


def lse_then_subtract(logits, targets):
    """jax.nn.logsumexp(x) - x[target]: the log-sum-exp is rounded before the target logit is
    subtracted, so a large common offset swamps the loss (the pytorch#11752 bug class)."""
    wide = logits.astype(jnp.float32) if logits.dtype in (jnp.float16, jnp.bfloat16) else logits
    return (jax.nn.logsumexp(wide, axis=1) - _picked(wide, targets)).astype(logits.dtype)


def naive(logits, targets):
    """softmax then log, with no max shift: overflows where exp does."""
    exps = jnp.exp(logits)
    probs = exps / exps.sum(axis=1, keepdims=True)
    return -jnp.log(_picked(probs, targets))


jitted = jax.jit(stable)


def mean(logits, targets):
    return stable(logits, targets).mean()
