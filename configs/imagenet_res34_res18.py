"""ImageNet CAT-KD, ResNet34 -> ResNet18 (paper Table 3), teacher: torchvision's pretrained ResNet34.

    python main.py --config configs/imagenet_res34_res18.py \
        --config.data.dir=~/tensorflow_datasets \
        --config.teacher.checkpoint=pretrained/resnet34-b627a593.pth

The teacher is torchvision's published `resnet34-b627a593.pth` (73.3% top-1), imported on the
fly (or once with `python -m catkd_jax.convert --arch imagenet_resnet34 ...`).
"""

from catkd_jax import config_files
from catkd_jax import default_config as default


def imagenet_recipe(config):
    """The ImageNet recipe shared by the ImageNet configs (the original mdistiller/CAT-KD files)."""
    config.data.name = "imagenet2012"
    config.data.source = "tfds"
    config.data.image_size = 224
    config.batch_size = 512  # global; the original trains on 8 GPUs x 64
    config.eval_batch_size = 500  # 50,000 validation images in 100 batches
    config.num_epochs = 100
    config.optim.lr = 0.2
    # lr 0.2 is the original's rate for a batch of 512; another global batch scales it linearly.
    config.optim.lr_batch_size = 512
    config.optim.weight_decay = 1e-4
    config.optim.decay_epochs = (30, 60, 90)
    config.optim.decay_rate = 0.1
    config.checkpoint.every_epochs = 1  # an ImageNet epoch is long; resume loses at most one
    config.log_every_steps = 250  # 2,502 steps per epoch at batch 512: ten step records each
    return config


def get_config():
    config = imagenet_recipe(default.get_config())
    # Every number below: docs/original_settings.md (ImageNet line).
    config.method = "cat_kd"
    config.student.arch = "imagenet_resnet18"  # CAM-head student: classifier_bias False (default)
    config.teacher.arch = "imagenet_resnet34"
    config.teacher.checkpoint = "pretrained/resnet34-b627a593.pth"
    config.teacher.config = config_files.beside(__file__, "imagenet_teacher_resnet34.py")
    config.cat_kd.beta = 0.5  # CAT_loss_weight
    config.cat_kd.resolution = 4  # CAM_RESOLUTION (of the native 7x7 CAMs)
    config.cat_kd.normalize = False  # IF_NORMALIZE
    return config
