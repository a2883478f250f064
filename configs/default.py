"""Every configuration field, documented once. Experiment files override a few of them.

Defaults are the CIFAR-100 recipe of the CAT-KD paper for resnet32x4 -> resnet8x4
(the original `configs/cifar100/CAT_KD/res32x4_res8x4.yaml`). Any field can be overridden on
the command line: `python main.py --config configs/default.py --config.cat_kd.beta=10`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # 'single': train config.method. 'quickstart': train a teacher (teacher.arch), a vanilla and
    # a CAT-KD student (student.arch), then compare accuracy and CAM localisation (needs a data
    # source with object boxes: 'shapes'); see catkd_jax/quickstart.py.
    config.pipeline = "single"
    # 'vanilla' (cross-entropy only), 'cat_kd', 'kd' (Hinton) or 'dkd' (decoupled KD).
    config.method = "cat_kd"

    config.student = ml_collections.ConfigDict()
    config.student.arch = "resnet8x4"  # any name of catkd_jax.models.list_models() or an alias
    # The original CAT-KD students are CAM-head networks whose logits are pooled CAMs, with no
    # classifier bias; vanilla, KD and DKD students keep the usual biased linear classifier.
    config.student.classifier_bias = False

    config.teacher = ml_collections.ConfigDict()
    config.teacher.arch = "resnet32x4"
    # '' (none: only for method 'vanilla', or with train_if_missing), a workdir or checkpoint
    # directory of this project, a model directory of `python -m catkd_jax.convert`, or a
    # published PyTorch `.pth` (mdistiller layout).
    config.teacher.checkpoint = ""
    # With no usable teacher.checkpoint: train the teacher first with `teacher.config` (its
    # student.arch set to teacher.arch, its data section replaced by this config's) into
    # `<workdir>/teacher`, then distil from it (and reuse it when the command is re-run).
    config.teacher.train_if_missing = False
    config.teacher.config = "configs/cifar100_teacher_resnet32x4.py"
    config.teacher.num_epochs = 0  # with train_if_missing: the teacher's epochs (0 = its config's)
    # Run the frozen teacher with its BatchNorms folded into the convolutions: the same function
    # (to ~1e-6 relative), faster; False runs the network exactly as saved.
    config.teacher.fold_batch_norm = True

    # CAT-KD: ce_weight * CE + beta * CAT (paper section 3; original CAT_KD config keys noted).
    config.cat_kd = ml_collections.ConfigDict()
    config.cat_kd.beta = 15.0  # CAT_loss_weight
    config.cat_kd.resolution = 2  # CAM_RESOLUTION: CAMs are pooled to resolution x resolution
    config.cat_kd.normalize = False  # IF_NORMALIZE: l2-normalise each pooled CAM
    config.cat_kd.binarize = False  # IF_BINARIZE: teacher CAMs -> 1 above their mean |cam|
    config.cat_kd.ce_weight = 1.0  # CE_WEIGHT; 0 is the paper's "CAT" (onlyCAT)
    # Transfer only num_cams classes' CAMs per image (0 = all), chosen by teacher score:
    # 'top' (highest) or 'bottom' (lowest). Exactly num_cams classes (see losses.select_cam_classes).
    config.cat_kd.num_cams = 0
    config.cat_kd.cam_strategy = "top"

    # Hinton KD baseline: ce_weight * CE + kd_weight * KL(teacher || student) at temperature.
    config.kd = ml_collections.ConfigDict()
    config.kd.temperature = 4.0
    config.kd.ce_weight = 0.1
    config.kd.kd_weight = 0.9

    # DKD baseline (Zhao et al. 2022): ce_weight * CE + min(epoch / warmup_epochs, 1) * DKD.
    config.dkd = ml_collections.ConfigDict()
    config.dkd.alpha = 1.0
    config.dkd.beta = 8.0
    config.dkd.temperature = 4.0
    config.dkd.ce_weight = 1.0
    config.dkd.warmup_epochs = 20

    # SGD with momentum; weight decay is L2 added to the gradient before momentum, on every
    # student parameter, like torch.optim.SGD. The learning rate is constant within an epoch
    # and multiplied by decay_rate after each epoch listed in decay_epochs.
    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 0.05
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.decay_epochs = (150, 180, 210)
    config.optim.decay_rate = 0.1

    config.batch_size = 64  # global, over all devices and hosts
    config.eval_batch_size = 64  # global; the last test batch is padded and masked
    config.num_epochs = 240
    config.seed = 0  # initialisation, data order and augmentation derive from it
    config.dtype = "float32"  # activation dtype: 'float32' or 'bfloat16' (parameters stay f32)

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar100"  # 'cifar100' or 'cifar10': class count, normalisation
    # 'tfds', 'folder' (class sub-folders of images), 'synthetic' (learnable random data) or
    # 'shapes' (generated objects of 5 classes with their boxes; ignores data.name).
    config.data.source = "tfds"
    config.data.dir = ""  # TFDS data_dir ('' = TFDS's default) or the folder root (train/, test/)
    config.data.reserved_classes = 0  # train on the first k classes only (0 = all)
    config.data.reserved_rate = 1.0  # keep the first rate * n training images of each class
    config.data.synthetic_train_size = 1024  # sizes of the generated sets ('synthetic', 'shapes')
    config.data.synthetic_test_size = 256

    # Several independent students in one program (catkd_jax/runs.py), each in <workdir>/run_<k>,
    # with a summary table: one per seed, e.g. (0, 1, 2, 3, 4) (empty: the one run of `seed`),
    # and/or one per value of a float field of optim/cat_kd/kd/dkd, e.g. 'cat_kd.beta=10,50,100'
    # (all with `seed`, so the runs differ by that value alone). Both: every (value, seed) pair.
    config.runs = ml_collections.ConfigDict()
    config.runs.seeds = ()
    config.runs.sweep = ""

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_epochs = 10  # also after the last epoch; resuming starts from here
    config.checkpoint.keep = 2  # periodic checkpoints kept, besides the best one

    return config
