"""ImageNet ReviewKD baseline, ResNet34 -> ResNet18: the original's `configs/imagenet/r34_r18/reviewkd.yaml`."""

from catkd_jax import config_files

imagenet_res34_res18 = config_files.sibling(__file__, "imagenet_res34_res18")


def get_config():
    config = imagenet_res34_res18.get_config()
    # The yaml's REVIEWKD section (MAX_MID_CHANNEL aside: the original never reads it). Its
    # recipe is the pair's but for the batch: 256 at lr 0.1 (the others' 512 at 0.2).
    config.method = "reviewkd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.batch_size = 256
    config.optim.lr = 0.1
    config.optim.lr_batch_size = 256
    config.reviewkd.ce_weight = 1.0
    config.reviewkd.reviewkd_weight = 1.0
    config.reviewkd.warmup_epochs = 1
    config.reviewkd.shapes = (1, 7, 14, 28, 56)
    config.reviewkd.out_shapes = (1, 7, 14, 28, 56)
    config.reviewkd.in_channels = (64, 128, 256, 512, 512)
    config.reviewkd.out_channels = (64, 128, 256, 512, 512)
    config.reviewkd.stu_preact = True
    return config
