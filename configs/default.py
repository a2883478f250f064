"""Every config field with its default and documentation: `catkd_jax/default_config.py`.

This file makes it a config file like the others:
`python main.py --config configs/default.py --config.cat_kd.beta=10`.
"""

from catkd_jax.default_config import get_config  # noqa: F401  pylint: disable=unused-import
