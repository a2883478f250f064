"""ImageNet OFD baseline, ResNet50 -> MobileNet: the original's `configs/imagenet/r50_mv2/ofd.yaml`."""

from catkd_jax import config_files

imagenet_res50_mobilenet = config_files.sibling(__file__, "imagenet_res50_mobilenet")


def get_config():
    config = imagenet_res50_mobilenet.get_config()
    # Unlike the pair's other methods, the yaml trains OFD at batch 128 with lr 0.05 (the same
    # rate per image as 0.2 at 512) and sets FEAT_WEIGHT 1e-4; the rest is CFG.OFD's defaults.
    config.method = "ofd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.teacher.fold_batch_norm = False  # OFD runs the teacher in training mode, as the original
    config.batch_size = 128
    config.eval_batch_size = 128
    config.optim.lr = 0.05
    config.optim.lr_batch_size = 128
    config.ofd.feat_weight = 1e-4
    return config
