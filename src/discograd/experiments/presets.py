"""Named settings of the experiments: the paper's (Jang, Gu & Poole, 2016) and the official demo.

A preset is a dict from a command's option names (argparse ``dest``: ``n_latent`` for
``--n-latent``) to values; applying it changes that command's defaults, so options given on
the command line still win::

    discograd sbn --preset jang-bernoulli --steps 500      # the paper's SBN, 500 steps
    discograd compare vae --preset jang-categorical --estimators st,gumbel-softmax --seeds 3

``PRESETS`` holds the VAE presets (``discograd vae``), ``SBN_PRESETS`` and
``SEMISUP_PRESETS`` those of ``discograd sbn`` and ``discograd semisup``; ``DESCRIPTIONS``
says where each comes from and what differs from the source.

What the paper used and what discograd uses instead (said once here):

- Optimizer: the paper trains with SGD, momentum 0.9, the learning rate picked per estimator
  from {3e-5, 1e-5, 3e-4, 1e-4, 3e-3, 1e-3} on the validation set; discograd's trainer uses
  Adam, so the presets fix one Adam learning rate (sweep it with ``--lr`` to reproduce the
  selection).
- Data: MNIST with a fixed binarization (we use Larochelle & Murray's binarized MNIST, the
  standard such draw), test numbers with m = 1000 samples.
- Temperature: SBN fixed tau = 1 ("not necessary to anneal"); VAE
  tau = max(0.5, exp(-r t)) updated every N steps, r in {1e-5, 1e-4}, N in {500, 1000};
  semi-supervised tau = max(0.5, exp(-3e-5 t)) updated every 2000 steps.
- Layer sizes: SBN 392-200-200-392 (Bernoulli) and 392-(20x10)-(20x10)-392 (categorical),
  linear maps between stochastic layers; VAE a single stochastic layer of 200 Bernoulli or
  20 x 10 categorical variables, encoder and decoder linear (784-200-784).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

__all__ = [
    "DESCRIPTIONS",
    "PRESETS",
    "SBN_PRESETS",
    "SEMISUP_PRESETS",
    "PresetAction",
    "apply_preset",
    "get_preset",
    "presets_for",
]

_JANG_VAE = {
    "dataset": "binarized-mnist",
    "hidden": (),
    "estimator": "gumbel-softmax",
    "tau": 1.0,
    "tau_schedule": "exp",
    "tau_min": 0.5,
    "anneal_rate": 1e-4,
    "anneal_every": 1000,
    "steps": 100_000,
    "batch_size": 100,
    "lr": 3e-4,
    "iw_samples": 1000,
    "eval_every": 5000,
    "ckpt_every": 5000,
    "log_every": 500,
}

PRESETS: Dict[str, Dict[str, Any]] = {
    "jang-bernoulli": {**_JANG_VAE, "latent": "bernoulli", "n_latent": 200},
    "jang-categorical": {**_JANG_VAE, "latent": "categorical", "n_latent": 20, "n_classes": 10},
    "demo": {
        "dataset": "mnist",
        "latent": "categorical",
        "n_latent": 30,
        "n_classes": 10,
        "hidden": (512, 256),
        "estimator": "gumbel-softmax",
        "tau": 1.0,
        "tau_schedule": "exp",
        "tau_min": 0.5,
        "anneal_rate": 3e-5,
        "anneal_every": 1000,
        "steps": 50_000,
        "batch_size": 100,
        "lr": 1e-3,
        "iw_samples": 1000,
        "eval_every": 5000,
        "ckpt_every": 5000,
        "log_every": 500,
    },
}

_JANG_SBN = {
    "dataset": "binarized-mnist",
    "n_layers": 2,
    "estimator": "gumbel-softmax",
    "tau": 1.0,
    "tau_schedule": "constant",
    "steps": 100_000,
    "batch_size": 100,
    "lr": 3e-4,
    "eval_samples": 1000,
    "eval_every": 5000,
    "ckpt_every": 5000,
    "log_every": 500,
}

SBN_PRESETS: Dict[str, Dict[str, Any]] = {
    "jang-bernoulli": {**_JANG_SBN, "latent": "bernoulli", "n_latent": 200},
    "jang-categorical": {**_JANG_SBN, "latent": "categorical", "n_latent": 20, "n_classes": 10},
}

SEMISUP_PRESETS: Dict[str, Dict[str, Any]] = {
    "jang": {
        "dataset": "mnist",
        "n_classes": 10,
        "n_labeled": 100,
        "hidden": (500,),
        "z_dim": 50,
        "estimator": "gumbel-softmax",
        "tau": 1.0,
        "tau_schedule": "exp",
        "tau_min": 0.5,
        "anneal_rate": 3e-5,
        "anneal_every": 2000,
        "alpha": 0.1,
        "steps": 100_000,
        "batch_size": 100,
        "lr": 3e-4,
        "eval_every": 5000,
        "ckpt_every": 5000,
        "log_every": 500,
    },
}

DESCRIPTIONS: Dict[str, Dict[str, str]] = {
    "vae": {
        "jang-bernoulli": "Jang et al. (2016) section 4.2: 784-200-784, 200 Bernoulli latents, "
        "binarized MNIST, tau = max(0.5, exp(-1e-4 t)) every 1000 steps, m = 1000; Adam "
        "3e-4 instead of the paper's SGD with momentum and per-estimator learning rates",
        "jang-categorical": "Jang et al. (2016) section 4.2: 784-(20x10)-784, 20 categorical "
        "latents of 10 classes; otherwise as jang-bernoulli",
        "demo": "the official Gumbel-softmax demo (ericjang/gumbel-softmax): encoder "
        "784-512-256, 30 variables x 10 classes, Adam 1e-3, batch 100, 50,000 steps, "
        "tau = max(0.5, exp(-3e-5 t)) every 1000 steps; dynamically binarized MNIST. The demo "
        "also multiplies the learning rate by 0.9 every 1000 steps, which discograd's trainer "
        "does not do",
    },
    "sbn": {
        "jang-bernoulli": "Jang et al. (2016) section 4.1: 392-200-200-392 on binarized MNIST, "
        "fixed tau = 1, m = 1000 at evaluation; Adam 3e-4 instead of SGD with momentum",
        "jang-categorical": "Jang et al. (2016) section 4.1: 392-(20x10)-(20x10)-392",
    },
    "semisup": {
        "jang": "Jang et al. (2016) section 4.3 with Kingma et al.'s (2014) M2 MLPs (500 "
        "hidden units, 50 Gaussian latents) instead of the paper's convolutional networks: "
        "100 labels, the rest of MNIST unlabeled, tau = max(0.5, exp(-3e-5 t)) every 2000 "
        "steps, alpha from the paper's grid {0.1, 0.2, 0.3, 0.8, 1.0}",
    },
}

_BY_COMMAND = {"vae": PRESETS, "sbn": SBN_PRESETS, "semisup": SEMISUP_PRESETS}


def presets_for(command: str) -> Dict[str, Dict[str, Any]]:
    """The presets of ``command`` ("vae", "sbn" or "semisup")."""
    if command not in _BY_COMMAND:
        raise ValueError(f"command must be one of {tuple(_BY_COMMAND)}, got {command!r}")
    return _BY_COMMAND[command]


def get_preset(command: str, name: str) -> Dict[str, Any]:
    """A copy of the preset ``name`` of ``command``; ValueError listing the names otherwise."""
    table = presets_for(command)
    if name not in table:
        raise ValueError(
            f"unknown preset {name!r} for {command}; available: {', '.join(sorted(table))}"
        )
    return dict(table[name])


def apply_preset(parser: argparse.ArgumentParser, command: str, name: str) -> Dict[str, Any]:
    """Make the preset the parser's defaults (options given later on the command line win).

    Raises ValueError if the preset names an option the parser does not have.
    """
    preset = get_preset(command, name)
    dests = {action.dest for action in parser._actions}
    unknown = sorted(set(preset) - dests)
    if unknown:
        raise ValueError(
            f"preset {name!r} sets {', '.join(unknown)}, which 'discograd {command}' has no "
            "option for"
        )
    parser.set_defaults(**preset)
    return preset


class PresetAction(argparse.Action):
    """``--preset NAME``: sets every option of the preset that still holds its default.

    Options given on the command line win wherever they appear (before or after
    ``--preset``), except an option given explicitly with its default value before
    ``--preset``, which the preset overrides.
    """

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        command: str = "vae",
        **kwargs: Any,
    ) -> None:
        self.command = command
        kwargs.setdefault("metavar", "NAME")
        kwargs.setdefault("choices", sorted(presets_for(command)))
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        preset = get_preset(self.command, values)
        dests = {action.dest for action in parser._actions}
        unknown = sorted(set(preset) - dests)
        if unknown:
            parser.error(f"preset {values!r} sets unknown options: {', '.join(unknown)}")
        for key, value in preset.items():
            if getattr(namespace, key, None) == parser.get_default(key):
                setattr(namespace, key, value)
        setattr(namespace, self.dest, values)
