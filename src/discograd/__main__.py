"""``python -m discograd`` runs the same command line as the ``discograd`` script."""

from discograd.cli import entry

entry()
