"""A config file for `--config`: the config a workdir recorded in its `config.json`.

    catkd-jax --config catkd_jax/recorded_config.py:runs/X/config.json --mode eval --checkpoint runs/X

The command line uses it by itself when `--mode eval|visualize|linear_probe` is given a
`--checkpoint` with a recorded config and no `--config`; `--config.FIELD=value` overrides apply
on top as with any config file.
"""

import ml_collections

from catkd_jax import record


def get_config(path: str) -> ml_collections.ConfigDict:
    return record.read(path)
