"""A new objective in one entry: 1-IPS whose importance weights are normalised but not clipped."""

import torch

from twostage.losses import ips_weights
from twostage.objectives import Batch, Objective, Settings, register


def unclipped_ips_loss(
    batch: Batch, settings: Settings, generator: torch.Generator
) -> torch.Tensor:
    weights = ips_weights(batch.logits, batch.propensities, batch.items, clip=False, normalise=True)
    log_pi = torch.log_softmax(batch.logits, dim=1).gather(1, batch.items[:, None]).squeeze(1)
    return -(weights * log_pi).mean()


UNCLIPPED_IPS = register(Objective("ips-unclipped", "1-IPS (unclipped)", unclipped_ips_loss))
