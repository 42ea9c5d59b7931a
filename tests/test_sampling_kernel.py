"""The compiled inverse-CDF lookup (`twostage.sampling_kernel`) against the torch code.

numba is a dependency, so these run everywhere the package is installed; `tests/test_sampling.py`
runs the sampler's distribution tests with and without the kernel.
"""

from __future__ import annotations

import pytest
import torch

from twostage import sampling_kernel
from twostage.sampling import _inverse_cdf, _normalised_cdf, bucket_count


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_items", [1, 2, 5, 300, 3883])
def test_the_compiled_lookup_draws_the_items_of_the_torch_code(
    n_items: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same uniforms, same items: the kernel changes the speed, never a draw."""
    monkeypatch.setenv(sampling_kernel.ENV, "1")
    assert sampling_kernel.available(torch.device("cpu"))
    g = _gen(n_items)
    weights = torch.rand(5, n_items, generator=g, dtype=torch.float64)
    weights[0] = weights[0] ** 30  # skewed: crowded buckets
    weights[1, 1::3] = 0.0  # ties in the CDF
    weights[2, n_items // 2 + 1 :] = 0.0  # trailing zeros
    cdf = _normalised_cdf(weights)
    m = bucket_count(n_items)
    x = torch.rand(5, 5_000, generator=g, dtype=torch.float64) * m
    x[:, :3] = m  # uniforms rounded up to one
    x[:, 3:10] = torch.arange(7, dtype=torch.float64) % m  # exactly on bucket edges
    compiled = _inverse_cdf(cdf, x)
    monkeypatch.setenv(sampling_kernel.ENV, "0")
    assert torch.equal(compiled, _inverse_cdf(cdf, x))
    threads = torch.get_num_threads()
    try:  # the parallel kernel (rows split between threads) draws the same items
        torch.set_num_threads(2)
        monkeypatch.setenv(sampling_kernel.ENV, "1")
        assert torch.equal(compiled, _inverse_cdf(cdf, x))
    finally:
        torch.set_num_threads(threads)
