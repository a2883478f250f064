"""`python -m catkd_jax.convert`: see `catkd_jax.convert.cli`."""

from catkd_jax.convert import cli

cli.run()
