"""Training objectives of the candidate generator: cross-entropy, 1-IPS and 2-IPS.

Notation (Ma et al., WWW 2020): π = softmax(logits) is the candidate generator's policy over items,
`a` the logged item, `p` its logging propensity, and q(a|S) the ranker's softmax over the distinct
items of a candidate set (slate) S. Every function is batched over rows.

Sampled softmax: each loss also takes `log_mass`, (batch, P) for logits over a pool of P
columns instead of the whole catalogue (`twostage.pipeline.pools`). Column j stands for
exp(log_mass[j]) catalogue items — 0 for a column scored exactly (the logged item, the head of
the policy), log(1 / (S · Q(j))) for one of S tail items drawn from a proposal Q (the log-Q
correction), −inf for a column left out. Then Ẑ = Σ_j exp(logit_j + log_mass_j) estimates the
softmax's normaliser and log π(j) ≈ logit_j − log Ẑ; 2-IPS draws its slates from the tempered
pool, exp(logit_j / T + log_mass_j). Without `log_mass` the logits cover the catalogue and the
losses are exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from twostage.errors import ConfigError, NumericsError
from twostage.sampling import sample_slates

SLATE_SAMPLERS = ("torch", "fused")  # how 2-IPS draws its sets (`two_stage_ips_loss`)

__all__ = ["cross_entropy_loss", "ips_loss", "ips_weights", "slate_policy", "two_stage_ips_loss"]


def _first_bad_row(bad: torch.Tensor) -> int:
    """Index of the first True row of a (batch,) or (batch, …) bool tensor."""
    return int(bad.reshape(bad.size(0), -1).any(dim=1).nonzero()[0, 0])


def _check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    if logits.dim() != 2 or logits.size(0) == 0 or logits.size(1) == 0:
        raise ConfigError(
            f"{name} must have shape (batch ≥ 1, n_items ≥ 1), got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    smallest, largest = torch.aminmax(logits.detach())  # one pass; NaN propagates to both
    if not (torch.isfinite(smallest) and torch.isfinite(largest)):
        row = _first_bad_row(~torch.isfinite(logits))
        raise NumericsError(f"{name} row {row} has a NaN or infinite entry")


def _check_actions(actions: torch.Tensor, logits: torch.Tensor) -> None:
    batch, n_items = logits.shape
    if actions.shape != (batch,):
        raise ConfigError(
            f"actions must have shape ({batch},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(actions.shape)}"
        )
    if actions.is_floating_point() or actions.dtype == torch.bool:
        raise ConfigError(f"actions must be integer item indices, got {actions.dtype}")
    bad = (actions < 0) | (actions >= n_items)
    if bad.any():
        row = _first_bad_row(bad)
        raise ConfigError(
            f"actions row {row} is item {int(actions[row])}, outside [0, {n_items - 1}]"
        )


def _check_propensities(propensities: torch.Tensor, batch: int) -> None:
    if propensities.shape != (batch,):
        raise ConfigError(
            f"propensities must have shape ({batch},), got {tuple(propensities.shape)}"
        )
    if not propensities.is_floating_point():
        raise ConfigError(f"propensities must be floating point, got {propensities.dtype}")
    # `~(p > 0)` is also True for NaN.
    bad = ~(propensities > 0) | (propensities > 1)
    if bad.any():
        row = _first_bad_row(bad)
        raise NumericsError(
            f"propensities row {row} is {float(propensities[row])}; "
            "a logging propensity must lie in (0, 1]"
        )


def _check_clip(cap: float, floor: float) -> None:
    if not (0 < floor <= cap < math.inf):
        raise ConfigError(f"need 0 < floor ≤ cap < inf, got floor={floor!r}, cap={cap!r}")


def _check_log_mass(log_mass: torch.Tensor, logits: torch.Tensor, actions: torch.Tensor) -> None:
    if log_mass.shape != logits.shape:
        raise ConfigError(
            f"log_mass {tuple(log_mass.shape)} must match logits {tuple(logits.shape)}"
        )
    if torch.isnan(log_mass).any() or (log_mass == torch.inf).any():
        raise NumericsError("log_mass must be finite or −inf (a column left out)")
    if (log_mass.gather(1, actions.view(-1, 1)) != 0).any():
        raise ConfigError("the logged item's column must be scored exactly (log_mass 0)")


def _pool_log_pi(logits: torch.Tensor, log_mass: torch.Tensor | None) -> torch.Tensor:
    """(batch, P) log π of each column: log_softmax over the catalogue, or its sampled estimate
    logit − log Ẑ over a pool; 0 (no gradient, no NaN) in columns left out."""
    if log_mass is None:
        return F.log_softmax(logits, dim=1)
    kept = torch.isfinite(log_mass)
    log_z = torch.logsumexp(logits + log_mass, dim=1, keepdim=True)
    return torch.where(kept, logits - log_z, torch.zeros_like(logits))


def cross_entropy_loss(
    logits: torch.Tensor, actions: torch.Tensor, log_mass: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of the logged items: −mean_i log π(a_i).

    Args:
        logits: (batch, n_items) candidate-generator scores, or (batch, P) over a pool.
        actions: (batch,) long, the logged item of each row (0-based), or its pool column.
        log_mass: (batch, P) or None — a pool's columns (module docstring): the sampled softmax
            with the log-Q correction.

    Returns:
        () scalar loss.
    """
    _check_logits(logits)
    _check_actions(actions, logits)
    if log_mass is not None:
        _check_log_mass(log_mass, logits, actions)
        return F.cross_entropy(logits + log_mass, actions)  # the logged column's mass is 0
    # The same log-softmax and gradient as −log_softmax(logits).gather(actions).mean(), with a
    # sparse backward for the gathered entries (no dense zero matrix then a scatter).
    return F.cross_entropy(logits, actions)


def _weights_from_pi_a(
    pi_a: torch.Tensor,
    propensities: torch.Tensor,
    cap: float,
    floor: float,
    clip: bool = True,
    normalise: bool = True,
) -> torch.Tensor:
    """(batch,) importance weights from π(a_i) (batch,) and p_i (batch,), without gradient."""
    weights = pi_a.detach() / propensities.to(pi_a.dtype)
    if clip:
        weights = weights.clamp(min=floor, max=cap)
    return normalise_weights(weights) if normalise else weights


def normalise_weights(weights: torch.Tensor) -> torch.Tensor:
    """(batch,) weights divided by their batch mean, as every IPS loss here uses them."""
    return weights / weights.mean()


def ips_weights(
    logits: torch.Tensor,
    propensities: torch.Tensor,
    actions: torch.Tensor,
    *,
    cap: float = 10.0,
    floor: float = 0.01,
    clip: bool = True,
    normalise: bool | None = None,
) -> torch.Tensor:
    """Importance weights π(a_i) / p_i of the logged items, detached from the graph.

    Args:
        logits: (batch, n_items) candidate-generator scores.
        propensities: (batch,) logging propensities p_i in (0, 1].
        actions: (batch,) long logged items.
        cap, floor: clipping range [floor, cap] applied when `clip` is True.
        clip: clip the weights to [floor, cap]. `clip=False` gives the raw weights.
        normalise: divide by the batch mean; defaults to `clip`, so the default gives the
            weights the IPS losses use and `clip=False` gives the raw ratios.

    Returns:
        (batch,) weights.
    """
    _check_inputs(logits, actions, propensities, cap, floor)
    with torch.no_grad():
        log_pi_a = F.log_softmax(logits.detach(), dim=1).gather(1, actions.view(-1, 1))
        return _weights_from_pi_a(
            log_pi_a.squeeze(1).exp(),
            propensities,
            cap,
            floor,
            clip=clip,
            normalise=clip if normalise is None else normalise,
        )


def _check_inputs(
    logits: torch.Tensor,
    actions: torch.Tensor,
    propensities: torch.Tensor,
    cap: float,
    floor: float,
) -> None:
    _check_logits(logits)
    _check_actions(actions, logits)
    _check_propensities(propensities, logits.size(0))
    _check_clip(cap, floor)


def ips_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    propensities: torch.Tensor,
    *,
    cap: float = 10.0,
    floor: float = 0.01,
    log_mass: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-stage IPS loss (1-IPS): −mean_i w_i log π(a_i).

    w_i = clip(π(a_i) / p_i, floor, cap) divided by its batch mean, and carries no gradient.
    Over a pool (`log_mass`), π(a_i) is the sampled estimate and p_i the log's exact propensity.

    Args:
        logits: (batch, n_items) candidate-generator scores, or (batch, P) over a pool.
        actions: (batch,) long logged items, or their pool columns.
        propensities: (batch,) logging propensities in (0, 1].
        log_mass: (batch, P) or None — a pool's columns (module docstring).

    Returns:
        () scalar loss.
    """
    _check_inputs(logits, actions, propensities, cap, floor)
    if log_mass is not None:
        _check_log_mass(log_mass, logits, actions)
        logits = logits + log_mass  # the logged column's mass is 0: its logit is unchanged
    neg_log_pi_a = F.cross_entropy(logits, actions, reduction="none")  # −log π(a_i), (batch,)
    weights = _weights_from_pi_a((-neg_log_pi_a.detach()).exp(), propensities, cap, floor)
    return (weights * neg_log_pi_a).mean()


def _check_slates(slates: torch.Tensor, batch: int, n_items: int) -> None:
    if slates.dim() != 3 or slates.size(0) != batch or slates.size(1) < 1 or slates.size(2) < 1:
        raise ConfigError(
            f"slates must have shape ({batch}, n_slates ≥ 1, slate_size ≥ 1), "
            f"got {tuple(slates.shape)}"
        )
    if slates.is_floating_point() or slates.dtype == torch.bool:
        raise ConfigError(f"slates must be integer item indices, got {slates.dtype}")
    bad = (slates < 0) | (slates >= n_items)
    if bad.any():
        raise ConfigError(
            f"slates row {_first_bad_row(bad)} holds an item outside [0, {n_items - 1}]"
        )


def slate_policy(
    logits: torch.Tensor, temperature: float, log_mass: torch.Tensor | None = None
) -> torch.Tensor:
    """(batch, P) probabilities 2-IPS draws its slates from: softmax(logits / T) over the
    catalogue, or over a pool softmax(logits / T + log_mass) — a tail column stands for
    exp(log_mass) items, and a column left out (−inf) is never drawn."""
    tempered = logits / temperature
    if log_mass is not None:
        tempered = tempered + log_mass
    return F.softmax(tempered, dim=1)


def two_stage_ips_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    propensities: torch.Tensor,
    ranker_logits: torch.Tensor,
    *,
    alpha: float = 1e-3,
    n_slates: int = 100,
    slate_size: int = 30,
    temperature: float = math.e,
    cap: float = 10.0,
    floor: float = 0.01,
    generator: torch.Generator | None = None,
    slates: torch.Tensor | None = None,
    log_mass: torch.Tensor | None = None,
    slate_sampler: str = "torch",
) -> torch.Tensor:
    """Two-stage IPS loss (2-IPS), a Monte Carlo estimate over sampled candidate sets.

    For each row, S_1 … S_K are `n_slates` sets of `slate_size` items drawn with replacement from
    softmax(logits / temperature) (detached), each with the logged item a appended; only their
    distinct items count. With q(a|S) the ranker's softmax over the distinct items of S at a:

        loss = −mean_i[ w_i · mean_k q(a_i|S_k) · log π(a_i) ]
               − α · mean_i[ w_i · mean_k q(a_i|S_k) · Σ_{j ∈ S_k, j ≠ a_i} log π(j) ]

    w are the 1-IPS weights (see `ips_weights`); q and w carry no gradient, log π does.

    Args:
        logits: (batch, n_items) candidate-generator scores.
        actions: (batch,) long logged items.
        propensities: (batch,) logging propensities in (0, 1].
        ranker_logits: (batch, n_items) the ranker's scores for the batch's users (detached here).
        alpha: weight of the second (candidate-set) term.
        n_slates, slate_size: Monte Carlo sets per row and items drawn per set.
        temperature: softening of the sampling distribution (> 0).
        generator: random source of the sampling (see `twostage.sampling.sample_slates`).
        slates: (batch, K, L) long pre-drawn slates, without the logged item; when given,
            no sampling happens and K, L come from its shape (`n_slates`, `slate_size` unused).
        log_mass: (batch, P) or None — logits, ranker_logits, actions and slates are over a
            pool's columns (module docstring); slates are drawn from the tempered pool and
            log π is the sampled estimate. A tail column is one representative item.
        slate_sampler: "torch" (default) draws the sets from `generator`'s stream
            (`twostage.sampling.sample_slates`); "fused" draws the same distribution from a
            counter hash keyed by one draw of `generator` and accumulates q in the same
            compiled pass (`twostage.fused_slates`: CPU and numba only; another random stream).

    Returns:
        () scalar loss.
    """
    _check_inputs(logits, actions, propensities, cap, floor)
    _check_logits(ranker_logits, "ranker_logits")
    if ranker_logits.shape != logits.shape:
        raise ConfigError(
            f"ranker_logits {tuple(ranker_logits.shape)} must match logits {tuple(logits.shape)}"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be finite and > 0, got {temperature!r}")
    if not math.isfinite(alpha):
        raise ConfigError(f"alpha must be finite, got {alpha!r}")
    batch, n_items = logits.shape
    if log_mass is not None:
        _check_log_mass(log_mass, logits, actions)
    log_pi = _pool_log_pi(logits, log_mass)
    log_pi_a = log_pi.gather(1, actions.view(-1, 1)).squeeze(1)
    weights = _weights_from_pi_a(log_pi_a.detach().exp(), propensities, cap, floor)

    if slate_sampler not in SLATE_SAMPLERS:
        raise ConfigError(
            f"slate_sampler must be one of {', '.join(SLATE_SAMPLERS)}, got {slate_sampler!r}"
        )
    if slate_sampler == "fused" and slates is None:
        coef = _fused_coefficients(
            logits,
            actions,
            ranker_logits,
            weights,
            alpha,
            n_slates,
            slate_size,
            temperature,
            generator,
            log_mass,
        )
        return -(coef * log_pi).sum()

    with torch.no_grad():
        if slates is None:
            probs = slate_policy(logits.detach(), temperature, log_mass)
            slates = sample_slates(probs, n_slates, slate_size, generator=generator)
        else:
            _check_slates(slates, batch, n_items)
            slates = slates.long().sort(dim=2).values
        n_sets = slates.size(1)
        # In a sorted slate only the head of each run of equal items stands for a distinct item;
        # the rest of the run goes to column n_items, which carries no odds and no coefficient.
        slates[..., 1:].masked_fill_(slates[..., 1:] == slates[..., :-1], n_items)
        flat = slates.view(batch, -1)
        logged = actions.view(-1, 1)

        # q(a|S) = 1 / (1 + Σ_{distinct j ≠ a} exp(r_j − r_a)); an overflow to inf gives q = 0,
        # its limit, where a shared softmax shift could give 0 / 0. The appended logged item is
        # the 1, so its own odds are zeroed in case the slate holds it too.
        ranker = ranker_logits.detach().to(logits.dtype)
        odds = torch.empty(batch, n_items + 1, dtype=logits.dtype, device=logits.device)
        torch.sub(ranker, ranker.gather(1, logged), out=odds[:, :n_items]).exp_()
        odds[:, n_items] = 0.0
        odds.scatter_(1, logged, 0.0)
        q_a = 1.0 / (1.0 + odds.gather(1, flat).view_as(slates).sum(dim=2))  # (batch, K)

        # The loss is linear in log π, so gather its coefficients into one (batch, n_items) matrix
        # and let autograd differentiate a single dense product.
        coef = torch.zeros_like(odds).scatter_add_(
            1, flat, q_a.unsqueeze(2).expand_as(slates).reshape(batch, -1)
        )
        scale = (weights / batch).unsqueeze(1)
        coef = coef[:, :n_items].mul_(scale * (alpha / n_sets))
        # The logged item counts in the first term only.
        coef.scatter_(1, logged, q_a.mean(dim=1, keepdim=True) * scale)
    return -(coef * log_pi).sum()


@torch.no_grad()
def _fused_coefficients(
    logits: torch.Tensor,
    actions: torch.Tensor,
    ranker_logits: torch.Tensor,
    weights: torch.Tensor,
    alpha: float,
    n_slates: int,
    slate_size: int,
    temperature: float,
    generator: torch.Generator | None,
    log_mass: torch.Tensor | None,
) -> torch.Tensor:
    """(batch, n_items) coefficients of log π in 2-IPS, as `two_stage_ips_loss` builds them,
    from sets drawn and summed in one compiled pass (`twostage.fused_slates`)."""
    from twostage import fused_slates

    if not fused_slates.available(logits.device):
        raise ConfigError(
            "slate_sampler 'fused' needs the CPU and numba (and TWOSTAGE_NUMBA not 0); "
            "use slate_sampler 'torch'"
        )
    batch = logits.size(0)
    logged = actions.view(-1, 1)
    ranker = ranker_logits.detach().to(logits.dtype)
    odds = ranker.sub(ranker.gather(1, logged)).exp_().scatter_(1, logged, 0.0)
    coef = fused_slates.slate_coefficients(
        slate_policy(logits.detach(), temperature, log_mass),
        odds,
        actions,
        weights.double() / (batch * n_slates),
        fused_slates.step_key(generator),
        n_slates,
        slate_size,
        dtype=logits.dtype,
    )
    # The kernel gives w_i / (batch · K) · Σ_k q at the logged item (the first term) and the
    # same sums over the other items, which the second term weighs by α.
    logged_coef = coef.gather(1, logged)
    return coef.mul_(alpha).scatter_(1, logged, logged_coef)
