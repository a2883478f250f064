"""ImageNet CAT-KD, ResNet50 -> MobileNet (v1) (paper Table 3), teacher: torchvision's ResNet50.

    python main.py --config configs/imagenet_res50_mobilenet.py \
        --config.data.dir=~/tensorflow_datasets \
        --config.teacher.checkpoint=pretrained/resnet50-0676ba61.pth

The teacher is torchvision's published V1 weights `resnet50-0676ba61.pth` (76.1% top-1), the
teacher of the original experiments.
"""

from catkd_jax import config_files
from catkd_jax import default_config as default

imagenet_recipe = config_files.sibling(__file__, "imagenet_res34_res18").imagenet_recipe


def get_config():
    config = imagenet_recipe(default.get_config())
    # Every number below: docs/original_settings.md (ImageNet line); the SGD
    # recipe (lr 0.2 at batch 512, 100 epochs) is the original's for both ImageNet pairs.
    config.method = "cat_kd"
    config.student.arch = "imagenet_mobilenet_v1"
    config.teacher.arch = "imagenet_resnet50"
    config.teacher.checkpoint = "pretrained/resnet50-0676ba61.pth"
    config.teacher.config = config_files.beside(__file__, "imagenet_teacher_resnet50.py")
    config.cat_kd.beta = 10.0  # CAT_loss_weight
    config.cat_kd.resolution = 2  # CAM_RESOLUTION
    config.cat_kd.normalize = True  # IF_NORMALIZE: different teacher/student families
    return config
