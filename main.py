"""catkd-jax command line, the same as the installed `catkd-jax` script (catkd_jax/cli.py).

    python main.py --config configs/cifar100_res32x4_res8x4.py [--config.a.b=value ...]
"""

from catkd_jax import cli

if __name__ == "__main__":
    cli.run()
