"""CIFAR-10 CAT only with Grad-CAM teacher maps, resnet32x4 -> resnet32x4 (paper's extension).

The appendix reports that CAT with Grad-CAM-generated teacher CAMs trains to only 10-15% on
CIFAR-10. No CIFAR-10 teacher is published: the teacher is trained first (teacher.config on
CIFAR-10) unless --config.teacher.checkpoint names one.
"""

from catkd_jax import config_files

cat_only = config_files.sibling(__file__, "cifar100_cat_res32x4_res32x4")


def get_config():
    # The CAT-only study (CE weight 0, normalised 2x2 maps, beta 50), on CIFAR-10, with the
    # teacher's maps made by Grad-CAM instead of its classifier weights.
    config = cat_only.get_config()
    config.data.name = "cifar10"
    config.cat_kd.teacher_cams = "gradcam"
    config.teacher.train_if_missing = True
    return config
