"""Optional integrations with other libraries, each imported only on request.

- :mod:`discograd.contrib.pyro`: discograd's relaxed distributions as Pyro distributions
  (needs ``pip install discograd[pyro]``).

Nothing here is imported by ``import discograd``.
"""
