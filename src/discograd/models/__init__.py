"""Models for the experiments: each a model plus an experiment for :func:`discograd.train.fit`."""

from discograd.models.vae import DiscreteVAE, VAEExperiment

__all__ = ["DiscreteVAE", "VAEExperiment"]
