"""2-IPS's candidate sets and their coefficients in one compiled pass (numba, CPU): the named
option `candidates.slate_sampler = "fused"`.

The default sampler (`twostage.sampling.sample_slates`, then the bookkeeping in
`twostage.losses.two_stage_ips_loss`) makes about fifteen passes over the ~400k draws of a
training step: uniforms from torch's generator, their logarithms (sorted uniforms), the lookup,
the marking of repeated items, the ranker's odds gathered, summed and scattered back. Here one
loop per row does it all while the row's tables sit in cache:

- the row's CDF edges (cdf · m) and the ranker's odds are laid side by side in one table, so a
  draw reads both from one cache line;
- each draw's uniform is SplitMix64's finaliser of counter ^ key (as
  `twostage.counter_random`), the counter (row · K + set) · L + position and the key one draw of
  the run's generator per step; so no uniform is stored, and a row's draws do not depend on the
  thread count or on the other rows' weights;
- the draw is settled by the same guide-table lookup as `twostage.sampling_kernel` (the first
  item whose CDF edge exceeds u · m);
- an item already in the set is recognised by a stamp (the set's number, per item), so the set
  needs no sort;
- q(a|S) = 1 / (1 + Σ_{distinct j ∈ S} odds_j) and every distinct item's coefficient Σ_k q(a|S_k)
  are accumulated on the spot, in float64.

The distribution of the sets is exactly the default's: `slate_size` i.i.d. draws from the row's
policy. The random stream is another one (a counter hash instead of torch's generator), so a
run's numbers differ from the default's as another seed's would; that is why it is an option.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from twostage import sampling_kernel
from twostage.counter_random import GOLDEN, MIX1, MIX2, TO_UNIT
from twostage.errors import NumericsError
from twostage.sampling import bucket_count, check_count

try:
    import numba
except ImportError:  # the option is refused without numba (`available`)
    numba = None

__all__ = ["available", "slate_coefficients", "slate_draws", "step_key"]

_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _jit(parallel: bool = False):
    """numba's compiler (compiled on first call, cached on disk), or nothing without numba."""
    if numba is None:
        return lambda function: function
    return numba.njit(cache=True, nogil=True, parallel=parallel)


_prange = range if numba is None else numba.prange


@_jit()
def _row_table(probs, odds, row, m, table, guide):
    """Fill `table` (n, 2) float64 with the row's CDF edges (cdf · m, the last exactly m) and
    odds, side by side so that a draw reads both from one cache line, and `guide` (m + 1,)
    int32 with guide[g] = #{j : edge_j ≤ g}. False if the row's weights do not sum to a
    positive finite number."""
    n = probs.shape[1]
    total = 0.0
    for j in range(n):
        total += probs[row, j]
        table[j, 0] = total
    if not (total > 0.0 and total < np.inf):
        return False
    for g in range(m + 1):
        guide[g] = 0
    to_edge = m / total  # a product is monotone, so equal sums keep equal edges
    for j in range(n):
        # The last item of positive weight, and the zero-weight items after it, end exactly at m
        # (a product may round either side of it).
        edge = m if table[j, 0] == total else min(table[j, 0] * to_edge, m)
        table[j, 0] = edge
        table[j, 1] = odds[row, j]
        guide[int(math.ceil(edge))] += 1  # edge ≤ g ⟺ ceil(edge) ≤ g for an integer g
    count = 0
    for g in range(m + 1):
        count += guide[g]
        guide[g] = count
    return True


@_jit()
def _draw(table, guide, key, counter, m):
    """The item of one draw: the first j with edge_j > u · m, u the hash of `counter ^ key`."""
    z = (counter ^ key) + GOLDEN
    z = (z ^ (z >> _S30)) * MIX1
    z = (z ^ (z >> _S27)) * MIX2
    z = z ^ (z >> _S31)
    # 53 bits (a signed integer converts in one instruction): v < m, exact as m is 2^b.
    v = np.float64(np.int64(z >> _S11)) * (TO_UNIT * m)
    k = guide[int(v)]
    k += table[k, 0] <= v  # the bucket's one edge, if any, without a branch
    while table[k, 0] <= v:  # a bucket holding several edges; the last edge m > v ends it
        k += 1
    return k


@_jit()
def _prepared_row(probs, odds, row, m, bad):
    """The row's (table, guide) of `_row_table`, and whether it can be drawn from (if not,
    bad[row] is set)."""
    table = np.empty((probs.shape[1], 2), np.float64)
    guide = np.empty(m + 1, np.int32)
    ok = _row_table(probs, odds, row, m, table, guide)
    if not ok:
        bad[row] = True
    return table, guide, ok


@_jit()
def _row_coefficients(
    probs, odds, actions, row_scale, key, n_slates, slate_size, m, coef, bad, row
):
    n = probs.shape[1]
    table, guide, ok = _prepared_row(probs, odds, row, m, bad)
    if not ok:
        return
    sums = np.zeros(n, np.float64)
    stamp = np.full(n, -1, np.int32)
    members = np.empty(slate_size, np.int64)
    first = np.uint64(row) * np.uint64(n_slates * slate_size)
    q_total = 0.0
    for k in range(n_slates):
        distinct, odds_sum = 0, 0.0
        for position in range(slate_size):
            j = _draw(table, guide, key, first + np.uint64(k * slate_size + position), m)
            if stamp[j] != k:
                stamp[j] = k
                members[distinct] = j
                distinct += 1
                odds_sum += table[j, 1]
        q = 1.0 / (1.0 + odds_sum)
        q_total += q
        for t in range(distinct):
            sums[members[t]] += q
    scale = row_scale[row]
    for j in range(n):
        coef[row, j] = sums[j] * scale
    coef[row, actions[row]] = q_total * scale


@_jit()
def _row_draws(probs, key, n_slates, slate_size, m, out, bad, row):
    table, guide, ok = _prepared_row(probs, probs, row, m, bad)
    if not ok:
        return
    first = np.uint64(row) * np.uint64(n_slates * slate_size)
    for k in range(n_slates):
        for position in range(slate_size):
            counter = first + np.uint64(k * slate_size + position)
            out[row, k, position] = _draw(table, guide, key, counter, m)


# Each kernel twice: rows in parallel, and one after another (`sampling_kernel.run_rows` picks).
@_jit()
def _coefficients_serial(probs, odds, actions, row_scale, key, n_slates, slate_size, m, coef, bad):
    for row in range(probs.shape[0]):
        _row_coefficients(
            probs, odds, actions, row_scale, key, n_slates, slate_size, m, coef, bad, row
        )


@_jit(parallel=True)
def _coefficients_parallel(
    probs, odds, actions, row_scale, key, n_slates, slate_size, m, coef, bad
):
    for row in _prange(probs.shape[0]):
        _row_coefficients(
            probs, odds, actions, row_scale, key, n_slates, slate_size, m, coef, bad, row
        )


@_jit()
def _draws_serial(probs, key, n_slates, slate_size, m, out, bad):
    for row in range(probs.shape[0]):
        _row_draws(probs, key, n_slates, slate_size, m, out, bad, row)


@_jit(parallel=True)
def _draws_parallel(probs, key, n_slates, slate_size, m, out, bad):
    for row in _prange(probs.shape[0]):
        _row_draws(probs, key, n_slates, slate_size, m, out, bad, row)


def available(device: torch.device) -> bool:
    """Whether the fused sampler runs here: on the CPU, with numba, unless `TWOSTAGE_NUMBA=0`."""
    return (
        device.type == "cpu"
        and os.environ.get(sampling_kernel.ENV, "1") != "0"
        and numba is not None
    )


def step_key(generator: torch.Generator | None) -> np.uint64:
    """A 64-bit key for one step's draws, taken from `generator` (one draw of it)."""
    value = torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64)
    return np.uint64(int(value))


def _check_rows(bad: torch.Tensor) -> None:
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise NumericsError(
            f"probs row {row} does not sum to a positive finite number; nothing can be drawn"
        )


def slate_coefficients(
    probs: torch.Tensor,
    odds: torch.Tensor,
    actions: torch.Tensor,
    row_scale: torch.Tensor,
    key: np.uint64,
    n_slates: int,
    slate_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw every row's `n_slates` sets and give 2-IPS's coefficient of each item's log π.

    Args:
        probs: (batch, n) float32 or float64 CPU — each row's sampling weights (≥ 0, finite;
            they need not sum to one).
        odds: (batch, n) float32 or float64 CPU — exp(r_j − r_a) of the ranker's scores r, with
            the logged item's own odds 0 (the appended logged item is the 1 of q's denominator).
        actions: (batch,) long — the logged item a of each row.
        row_scale: (batch,) float64 — the factor of each row's sums (2-IPS: w_i / batch).
        key: the step's key (`step_key`); the same key gives the same sets.

    Returns:
        (batch, n) `dtype` — row_scale · Σ_k q(a|S_k) over the sets S_k holding item j (j ≠ a),
        and row_scale · Σ_k q(a|S_k) at a. The caller divides by n_slates (and weighs the
        items other than a by α).
    """
    check_count("n_slates", n_slates, 1)
    check_count("slate_size", slate_size, 1)
    batch, n = probs.shape
    coef = torch.empty(batch, n, dtype=dtype)
    bad = torch.zeros(batch, dtype=torch.bool)
    sampling_kernel.run_rows(
        numba,
        _coefficients_serial,
        _coefficients_parallel,
        probs.contiguous().numpy(),
        odds.contiguous().numpy(),
        actions.contiguous().numpy(),
        row_scale.to(torch.float64).contiguous().numpy(),
        key,
        n_slates,
        slate_size,
        bucket_count(n),
        coef.numpy(),
        bad.numpy(),
    )
    _check_rows(bad)
    return coef


def slate_draws(
    probs: torch.Tensor, key: np.uint64, n_slates: int, slate_size: int
) -> torch.Tensor:
    """(batch, n_slates, slate_size) long: the items `slate_coefficients` draws for the same
    weights and key, in draw order (for tests and inspection)."""
    check_count("n_slates", n_slates, 1)
    check_count("slate_size", slate_size, 1)
    out = torch.empty(probs.shape[0], n_slates, slate_size, dtype=torch.long)
    bad = torch.zeros(probs.shape[0], dtype=torch.bool)
    sampling_kernel.run_rows(
        numba,
        _draws_serial,
        _draws_parallel,
        probs.contiguous().numpy(),
        key,
        n_slates,
        slate_size,
        bucket_count(probs.shape[1]),
        out.numpy(),
        bad.numpy(),
    )
    _check_rows(bad)
    return out
