"""The inverse-CDF lookup of `twostage.sampling` as one compiled loop (numba), on the CPU.

`twostage.sampling._inverse_cdf` finds, for each scaled uniform x of a row, the first item j with
edge[j] = cdf[j] · m > x, by a guide table and batched torch gathers: about fifteen passes over
the ~400k draws of a 2-IPS step. Here one loop per row builds the same guide table
(guide[g] = #{j : edge[j] ≤ g}, the first item whose edge exceeds g, by a histogram of the
edges' ceilings: no data-dependent branch) and settles each draw from its bucket with one
comparison, scanning on only in a bucket that holds several edges. The comparisons are the same
float64 comparisons, so the items are exactly those of the torch code (tested); rows are
independent, so the result does not depend on the thread count.

numba is imported when the kernel is first needed and compiled then (about a second; cached on
disk where the package directory is writable). Without numba, or with `TWOSTAGE_NUMBA=0`,
`twostage.sampling` uses its torch code.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch

from twostage import runtime

ENV = "TWOSTAGE_NUMBA"  # "0" turns the compiled kernel off


def _lookup(edges: np.ndarray, x: np.ndarray, out: np.ndarray, row: int, m: int) -> None:
    """One row: edges (n,) float64 non-decreasing with edges[-1] == m; x (d,) in [0, m]."""
    e, xs, o = edges[row], x[row], out[row]
    n = e.shape[0]
    guide = np.zeros(m + 1, np.int64)
    for j in range(n):  # e[j] ≤ g ⟺ ceil(e[j]) ≤ g for an integer g
        guide[int(math.ceil(e[j]))] += 1
    total = 0
    for g in range(m + 1):
        total += guide[g]
        guide[g] = total
    for d in range(xs.shape[0]):
        v = xs[d]
        if v >= m:  # a uniform rounded up to 1: the last item of positive weight
            k = guide[m - 1]
            while e[k] < m:
                k += 1
        else:  # the first edge above v lies at or after guide[floor(v)]; e[n-1] = m > v
            k = guide[int(v)]
            k += e[k] <= v
            while e[k] <= v:
                k += 1
        o[d] = k


# Bound by `_kernels` when numba is first needed: the row loops below read them as globals, which
# numba freezes when it compiles. (As closures, the loops got a new on-disk cache entry in every
# process, about 60 kB each.)
_lookup_compiled = None
_prange = range


def _rows(edges, x, out, m):
    for row in range(edges.shape[0]):
        _lookup_compiled(edges, x, out, row, m)


def _rows_parallel(edges, x, out, m):
    for row in _prange(edges.shape[0]):
        _lookup_compiled(edges, x, out, row, m)


@functools.cache
def _kernels():
    """(numba, serial, parallel) compiled kernels, or None without numba."""
    global _lookup_compiled, _prange
    try:
        import numba
    except ImportError:
        return None
    _lookup_compiled = numba.njit(cache=True, nogil=True)(_lookup)
    _prange = numba.prange
    serial = numba.njit(cache=True, nogil=True)(_rows)
    parallel = numba.njit(cache=True, nogil=True, parallel=True)(_rows_parallel)
    return numba, serial, parallel


def available(device: torch.device) -> bool:
    """Whether `inverse_cdf` runs here: on the CPU, with numba, unless `TWOSTAGE_NUMBA=0`."""
    return device.type == "cpu" and os.environ.get(ENV, "1") != "0" and _kernels() is not None


def inverse_cdf(edges: torch.Tensor, x: torch.Tensor, m: int) -> torch.Tensor:
    """edges: (batch, n_items) float64 CPU, non-decreasing rows ending exactly at m (a power of
    two); x: (batch, n_draws) float64 in [0, m] → (batch, n_draws) long: per draw the first j
    with edges[j] > x (x = m: the first j with edges[j] = m). Uses torch's thread count."""
    numba, serial, parallel = _kernels()
    out = torch.empty(x.shape, dtype=torch.long)
    run_rows(
        numba, serial, parallel, edges.contiguous().numpy(), x.contiguous().numpy(), out.numpy(), m
    )
    return out


def run_rows(numba, serial, parallel, *args) -> None:
    """Run a compiled loop over the rows of `args[0]`: `parallel` on torch's thread count where
    that is above one and there are several rows (`twostage.runtime.compiled_loop_threads`: one
    in a forked process), else `serial`. Rows are independent, so both give the same numbers."""
    threads = min(runtime.compiled_loop_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads > 1 and args[0].shape[0] > 1:
        numba.set_num_threads(threads)
        parallel(*args)
    else:
        serial(*args)
