"""ImageNet CRD baseline, ResNet34 -> ResNet18: the original's `configs/imagenet/r34_r18/crd.yaml`."""

from catkd_jax import config_files

imagenet_pair = config_files.sibling(__file__, "imagenet_res34_res18")


def get_config():
    config = imagenet_pair.get_config()
    # The yaml's CRD section (the embeddings' inputs) on CFG.CRD's defaults, and its recipe: batch
    # 256 at lr 0.1 (the pair's others: 512 at 0.2). It sets no LR_DECAY_STAGES, so the original
    # keeps CFG's 150, 180, 210: within its 100 epochs the rate never decays. Kept, as the original runs.
    config.method = "crd"
    config.student.classifier_bias = True  # the toolbox's baselines train plain (biased linear) students
    config.batch_size = 256
    config.optim.lr = 0.1
    config.optim.lr_batch_size = 256
    config.optim.decay_epochs = (150, 180, 210)
    config.crd.student_dim = 512
    config.crd.teacher_dim = 512
    return config
