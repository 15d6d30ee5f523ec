"""Calls that report compiling the way torch.compile does (dynamo's compile callbacks), without compiling."""

import time

from torch._dynamo.callback import CallbackTrigger, callback_handler


def compiles_every_call(x):
    """1.5 s inside dynamo's start/end compile callbacks, then a quick answer."""
    with callback_handler.install_callbacks(CallbackTrigger.DYNAMO, "0/0"):
        time.sleep(1.5)
    return x.sum()


def sleeps_every_call(x):
    """The same 1.5 s, reported as nothing: run time."""
    time.sleep(1.5)
    return x.sum()
