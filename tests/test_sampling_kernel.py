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


def test_the_compiled_kernels_reuse_their_disk_cache_across_processes(tmp_path) -> None:
    # Each process must load the kernels from the cache, not add entries to it (as closures,
    # the row loops added two files per process).
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("numba")
    script = (
        "import torch\n"
        "from twostage import sampling_kernel as k\n"
        "e = torch.linspace(0, 64, 50, dtype=torch.float64).repeat(2, 1)\n"
        "e[:, -1] = 64\n"
        "x = torch.rand(2, 8, dtype=torch.float64) * 64\n"
        "for threads in (2, 1):\n"
        "    torch.set_num_threads(threads)\n"
        "    k.inverse_cdf(e, x, 64)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    counts = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
        counts.append(sum(1 for path in tmp_path.rglob("*") if path.is_file()))
    assert counts[0] > 0
    assert counts[1] == counts[0]
