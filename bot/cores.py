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
"""

from __future__ import annotations

import os

import torch


def reserve_for_workers() -> None:
    """Keep this thread, and threads it starts later, to one torch thread; call before any torch work."""
    torch.set_num_threads(1)


def use_all(threads: int | None = None) -> None:
    """Give this thread ``threads`` torch threads; None: every core this process may run on."""
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
