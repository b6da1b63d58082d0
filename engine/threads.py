"""Which threads of a serving process get every core for torch.

GNU OpenMP, torch's CPU thread pool, gives each thread that runs parallel work
its own pool of workers, and once the pools together hold more threads than
there are cores it throttles their spin-waiting, for every pool. Decoding in the
scheduler's thread, after the main thread had loaded the models with a pool of
its own, ran 2 to 3 times slower than the same steps in the main thread (8 rows
of 32 tokens: 47 against 140 tok/s on 2 cores). So a process that serves keeps
its main thread to one torch thread from its first torch call on (it only loads
models and answers requests) and hands the cores to the threads that decode or
train.

The decoding thread also shares the GIL with the server's threads: the event
loop and one streaming response per request. A decoding step is hundreds of
small torch calls, and after each one that let the GIL go, the thread waits for
it until the holder yields, by default up to 5 ms later. A serving process
shortens that interval to 1 ms: 8 clients over 4 adapters, 123 against 112 tok/s.
"""

from __future__ import annotations

import os
import sys

import torch

GIL_SWITCH_SECONDS = 0.001


def reserve_for_workers() -> None:
    """Keep this thread, and threads it starts later, to one torch thread, and shorten the GIL's turns.

    Call it before any torch work, in a process whose decoding or training runs in threads of its own.
    """
    torch.set_num_threads(1)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


def use_all(threads: int | None = None) -> None:
    """Give this thread ``threads`` torch threads; None: every core this process may run on."""
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
