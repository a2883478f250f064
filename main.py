"""catkd-jax command line, the same as the installed `catkd-jax` script (catkd_jax/launch.py, cli.py).

    python main.py --config configs/cifar100_res32x4_res8x4.py [--config.a.b=value ...]
"""

from catkd_jax import launch

if __name__ == "__main__":
    launch.run()
