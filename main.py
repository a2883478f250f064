"""catkd-jax command line. Training and evaluation arrive with the training issue (#4).

Until then this entry point says what is available.
"""

import sys

USAGE = """catkd-jax: Class Attention Transfer Based Knowledge Distillation in JAX.

Available now:
  from catkd_jax.losses import cat_loss        # the CAT loss and KD/DKD baselines
  from catkd_jax.models import create_model    # the CIFAR architectures of the paper
  python -m catkd_jax.convert --arch resnet32x4 --checkpoint in.pth --output DIR

`python main.py --config configs/<experiment>.py` (training and evaluation) is not
implemented yet.
"""


if __name__ == "__main__":
    print(USAGE)
    sys.exit(0 if len(sys.argv) == 1 or sys.argv[1] in ("-h", "--help") else 2)
