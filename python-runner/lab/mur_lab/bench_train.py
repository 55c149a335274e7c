"""Helpers for mur_lab.bench_e2e: a fair timer for contenders on a noisy machine,
and a Fashion-MNIST training loop to time per batch."""

import itertools
import statistics
import time

import torch
from torch import nn

from mur_lab import data, models


def _nothing():
    pass


def interleaved(fns, seconds, min_calls, max_calls, warmup=3, burst=5, prepare=None):
    """The median milliseconds per call of each function of ``fns`` (name ->
    fn), and the number of timed calls of each.

    Every function first runs ``warmup`` times untimed. Then they take turns,
    ``burst`` timed calls each, so that whatever else the machine does hits
    them alike; this goes on until each has run ``min_calls`` times and
    ``seconds`` have passed, or each has run ``max_calls`` times.
    ``prepare`` (name -> fn), if given, runs untimed before every call.
    """
    prepare = prepare or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            prepare.get(name, _nothing)()
            fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            before = prepare.get(name, _nothing)
            for _ in range(burst):
                before()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        calls = len(next(iter(times.values())))
        if calls >= max_calls or (calls >= min_calls and time.perf_counter() - start >= seconds):
            return {name: statistics.median(t) * 1e3 for name, t in times.items()}, calls


def fashion_batches(count, size=64):
    """The first ``count`` training batches of Fashion-MNIST as tensors."""
    x, y = data.load("train")
    n = min(count * size, len(x))
    return [(torch.from_numpy(x[i : i + size]), torch.from_numpy(y[i : i + size])) for i in range(0, n, size)]


def model(name, seed=0):
    torch.manual_seed(seed)
    return {"mlp": models.mlp, "cnn": models.cnn}[name]()


def trainer(net, opt, batches):
    """A function that trains ``net`` on the next batch: zero_grad, forward, backward, step."""
    it = itertools.cycle(batches)
    loss_fn = nn.CrossEntropyLoss()

    def one_batch():
        x, y = next(it)
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    return one_batch
