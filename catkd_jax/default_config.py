"""Every configuration field, documented once. Experiment files override a few of them.

Defaults are the CIFAR-100 recipe of the CAT-KD paper for resnet32x4 -> resnet8x4
(the original `configs/cifar100/CAT_KD/res32x4_res8x4.yaml`). Any field can be overridden on
the command line: `python main.py --config configs/default.py --config.cat_kd.beta=10`.
The values a field may take (names, counts, lists of seeds or epochs) are checked before a
command writes anything, in one place: catkd_jax/validation.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # 'single': train config.method. 'quickstart': train a teacher (teacher.arch) on the whole
    # training set, then a vanilla and a CAT-KD student (student.arch) per seed of runs.seeds on
    # data.reserved_rate of it, and compare accuracy and CAM localisation as mean ± std (needs a
    # data source with object boxes: 'shapes'); see catkd_jax/quickstart.py.
    config.pipeline = "single"
    # 'vanilla' (cross-entropy only), 'cat_kd', 'kd' (Hinton), 'dkd' (decoupled KD), or a feature
    # method of the mdistiller toolbox: 'fitnet', 'at', 'nst', 'pkt', 'kdsvd', 'rkd', 'sp', 'vid',
    # 'ofd', 'reviewkd', 'crd'.
    config.method = "cat_kd"

    config.student = ml_collections.ConfigDict()
    config.student.arch = "resnet8x4"  # any name of catkd_jax.models.list_models() or an alias
    # The original CAT-KD students are CAM-head networks whose logits are pooled CAMs, with no
    # classifier bias; vanilla, KD and DKD students keep the usual biased linear classifier.
    config.student.classifier_bias = False
    # '' (from config.seed) or weights to start from: a workdir or checkpoint directory of this
    # project, a model directory of `python -m catkd_jax.convert`, or a PyTorch .pth of student.arch.
    config.student.init_checkpoint = ""

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
    # The teacher's config file; config files name the one beside them (config_files.beside), a
    # path given on the command line is from the working directory. '' with train_if_missing: refused.
    config.teacher.config = ""
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
    # How the transferred CAMs' squared errors are weighted: 'uniform' (the paper's CAT) or
    # 'teacher_prob' (by the teacher's softmax probability of each class, normalised to mean 1
    # per image: the paper's extension "CAMs weighted by prediction score").
    config.cat_kd.class_weighting = "uniform"
    # The teacher's maps to transfer: 'classifier' (its CAMs: the paper's CAT) or 'gradcam'
    # (Grad-CAM of each class at the same feature map: the paper's extension, which trained to
    # only 10-15% on CIFAR-10; see losses.grad_cams).
    config.cat_kd.teacher_cams = "classifier"

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

    # The feature-distillation baselines of the mdistiller toolbox: ce_weight * CE + feat_weight
    # * the method's loss (logged as loss_ce and loss_kd, the original's names). Defaults are the
    # original's (`mdistiller/engine/cfg.py`, its CFG.<METHOD> in brackets); the stage each
    # method reads is in its docstring (catkd_jax/methods/features.py).
    config.fitnet = ml_collections.ConfigDict()  # FitNets (Romero et al. 2015) [FITNET]
    config.fitnet.hint_layer = 2  # HINT_LAYER: the index into both networks' feats (0 = the stem)
    config.fitnet.input_size = (32, 32)  # INPUT_SIZE: the regressor is built for feats at this size
    config.fitnet.ce_weight = 1.0
    config.fitnet.feat_weight = 100.0
    config.at = ml_collections.ConfigDict()  # attention transfer (Zagoruyko & Komodakis 2017) [AT]
    config.at.p = 2  # P: attention map = mean over channels of |feat|^p
    config.at.ce_weight = 1.0
    config.at.feat_weight = 1000.0
    config.nst = ml_collections.ConfigDict()  # neuron selectivity transfer (Huang & Wang 2017) [NST]
    config.nst.ce_weight = 1.0
    config.nst.feat_weight = 50.0
    config.pkt = ml_collections.ConfigDict()  # probabilistic knowledge transfer (Passalis 2018) [PKT]
    config.pkt.ce_weight = 1.0
    config.pkt.feat_weight = 30000.0
    config.kdsvd = ml_collections.ConfigDict()  # KD with SVD (Lee et al. 2018) [KDSVD]
    config.kdsvd.k = 1  # K: singular vectors kept of the teacher (the student's: k + 3)
    config.kdsvd.ce_weight = 1.0
    config.kdsvd.feat_weight = 1.0
    config.rkd = ml_collections.ConfigDict()  # relational KD (Park et al. 2019) [RKD]
    config.rkd.distance_weight = 25.0
    config.rkd.angle_weight = 50.0
    config.rkd.pdist_epsilon = 1e-12  # PDIST.EPSILON: squared distances are clamped to it
    config.rkd.pdist_squared = False  # PDIST.SQUARED
    config.rkd.ce_weight = 1.0
    config.rkd.feat_weight = 1.0
    config.sp = ml_collections.ConfigDict()  # similarity-preserving KD (Tung & Mori 2019) [SP]
    config.sp.ce_weight = 1.0
    config.sp.feat_weight = 3000.0
    config.vid = ml_collections.ConfigDict()  # variational information distillation (Ahn et al. 2019) [VID]
    config.vid.eps = 1e-5  # EPS: added to the predicted variance
    config.vid.init_pred_var = 5.0  # INIT_PRED_VAR: the predicted variance (never trained: see VID)
    config.vid.input_size = (32, 32)  # INPUT_SIZE: the regressors are built for feats at this size
    config.vid.ce_weight = 1.0
    config.vid.feat_weight = 1.0
    # ReviewKD (Chen et al. 2021) [REVIEWKD]: ce_weight * CE + reviewkd_weight * min(epoch /
    # warmup_epochs, 1) * HCL. The lists are the original's, per ABF, in its orders
    # (catkd_jax/methods/review.py); they must fit the networks. These defaults are the original
    # CAT-KD code's, which fit resnet32x4 -> ShuffleV1 (mdistiller's own fit resnet32x4 ->
    # resnet8x4: configs/cifar100_reviewkd_res32x4_res8x4.py). Its MAX_MID_CHANNEL is never read
    # by its distiller (mid channels are min(512, in_channels[-1])), so it is no setting here.
    config.reviewkd = ml_collections.ConfigDict()
    config.reviewkd.shapes = (1, 4, 8, 16)  # SHAPES: the student features' sizes, deepest first
    config.reviewkd.out_shapes = (1, 8, 16, 32)  # OUT_SHAPES: the teacher features' sizes, deepest first
    config.reviewkd.in_channels = (240, 480, 960, 960)  # IN_CHANNELS: the student's, shallowest first
    config.reviewkd.out_channels = (64, 128, 256, 256)  # OUT_CHANNELS: the teacher's, shallowest first
    config.reviewkd.stu_preact = False  # STU_PREACT: read the student's preact_feats, not its feats
    config.reviewkd.warmup_epochs = 20  # WARMUP_EPOCHS
    config.reviewkd.ce_weight = 1.0  # CE_WEIGHT
    config.reviewkd.reviewkd_weight = 1.0  # REVIEWKD_WEIGHT
    config.ofd = ml_collections.ConfigDict()  # overhaul of feature distillation (Heo et al. 2019) [OFD]
    config.ofd.connector_kernel_size = 1  # CONNECTOR.KERNEL_SIZE
    config.ofd.ce_weight = 1.0
    config.ofd.feat_weight = 0.001
    config.crd = ml_collections.ConfigDict()  # contrastive representation distillation (Tian et al. 2020) [CRD]
    config.crd.mode = "exact"  # MODE: the positive is the example itself ('exact') or one of its class ('relax')
    config.crd.feat_dim = 128  # FEAT.DIM: the embeddings' width
    config.crd.student_dim = 960  # FEAT.STUDENT_DIM: must be the student's pooled_feat width
    config.crd.teacher_dim = 256  # FEAT.TEACHER_DIM: must be the teacher's pooled_feat width
    config.crd.num_negatives = 16384  # NCE.K: negatives per example, from other classes
    config.crd.momentum = 0.5  # NCE.MOMENTUM: of the memory banks' rows
    config.crd.temperature = 0.07  # NCE.TEMPERATURE
    config.crd.ce_weight = 1.0
    config.crd.feat_weight = 0.8

    # SGD with momentum; weight decay is L2 added to the gradient before momentum, on every
    # student parameter, like torch.optim.SGD. The learning rate is constant within an epoch
    # and multiplied by decay_rate after each epoch listed in decay_epochs.
    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 0.05
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.decay_epochs = (150, 180, 210)
    config.optim.decay_rate = 0.1
    # Linear scaling: with lr_batch_size > 0, optim.lr is the rate for a global batch of that
    # size and the rate used is lr * batch_size / lr_batch_size (ImageNet configs: lr 0.2 at
    # 512). 0 uses optim.lr as it is.
    config.optim.lr_batch_size = 0

    config.batch_size = 64  # global, over all devices and hosts
    config.eval_batch_size = 64  # global; the last test batch is padded and masked
    config.num_epochs = 240
    # Every this many training steps (0: never), each run's mean loss and accuracy over those
    # steps, the learning rate and the images/s go to metrics.jsonl (records with "step") and to
    # TensorBoard (tags "steps/..."). When stderr is not a terminal (a log file, a batch job),
    # the progress bar is replaced by a line at the same steps (every tenth of an epoch when 0).
    config.log_every_steps = 0
    config.seed = 0  # initialisation, data order and augmentation derive from it
    config.dtype = "float32"  # activation dtype: 'float32' or 'bfloat16' (parameters stay f32)

    config.data = ml_collections.ConfigDict()
    # 'cifar100', 'cifar10' or 'imagenet2012': class count, normalisation, recipe. ImageNet is
    # streamed from TFDS records or folders (train/<wnid>/, val/<wnid>/), never held in memory;
    # TFDS needs a manual download and `tfds build` (see catkd_jax/data/imagenet.py).
    config.data.name = "cifar100"
    # 'tfds', 'folder' (class sub-folders of images), 'synthetic' (learnable random data) or
    # 'shapes' (generated objects of 5 classes with their boxes; ignores data.name).
    config.data.source = "tfds"
    config.data.dir = ""  # TFDS data_dir ('' = TFDS's default) or the folder root (train/, test/)
    config.data.reserved_classes = 0  # train on the first k classes only (0 = all)
    config.data.reserved_rate = 1.0  # keep the first rate * n training images of each class
    # False (the original's DataLoader, no drop_last): an epoch sees every training image once,
    # the images after the last full batch making a smaller last batch (CIFAR-100 at batch 64:
    # 782 steps, the last of 16 images); the jitted step compiles once more for its shape. Over
    # several devices that batch is cut to a multiple of the device count so it splits evenly,
    # and the few images cut (the last of each epoch's shuffled order) sit that epoch out, as
    # the log says once. True: those images sit every epoch out and every batch holds
    # batch_size (781 steps): one compiled step, fixed shapes.
    config.data.drop_remainder = False
    # Training augmentation of the in-memory (CIFAR-style) sources: 'crop_flip' (pad 4, random
    # crop, random flip: the recipe) or 'trivial_augment' (the same, then torchvision's
    # TrivialAugmentWide: the paper's strong ResNet32x4 teacher of Table 4).
    config.data.augment = "crop_flip"
    config.data.synthetic_train_size = 1024  # sizes of the generated sets ('synthetic', 'shapes')
    config.data.synthetic_test_size = 256
    # imagenet2012 only: side of the square crops (0 = 224); training takes random-resized
    # crops of it, evaluation the centre crop after resizing the shorter side to size * 256/224.
    # The in-memory sources (CIFAR) ignore it and serve their images as stored.
    config.data.image_size = 0
    config.data.shuffle_buffer = 16384  # imagenet2012 from TFDS: records in the shuffle buffer

    # Several independent students in one program (catkd_jax/runs.py), each in <workdir>/run_<k>,
    # with a summary table: one per seed, e.g. (0, 1, 2, 3, 4) (empty: the one run of `seed`),
    # and/or one per value of a float field of optim/cat_kd/kd/dkd, e.g. 'cat_kd.beta=10,50,100'
    # (all with `seed`, so the runs differ by that value alone). Both: every (value, seed) pair.
    config.runs = ml_collections.ConfigDict()
    config.runs.seeds = ()
    config.runs.sweep = ""
    # How the runs' students share the program: 'vmap' (one batched computation, for GPUs and
    # TPUs), 'unroll' (one after another; XLA's CPU convolutions are slower batched) or 'auto'.
    config.runs.vectorize = "auto"

    config.checkpoint = ml_collections.ConfigDict()
    # Checkpoints (<workdir>/checkpoints/<step>) after every `every_epochs`-th epoch, the last
    # epoch, each new best and each interruption; the newest `keep` are kept, and the best.
    # These fields, num_epochs, eval_batch_size and probe.* may change when a run resumes.
    config.checkpoint.every_epochs = 10
    config.checkpoint.keep = 2

    # Linear probe (`--mode linear_probe --checkpoint X`, catkd_jax/probe.py): the network at X
    # is frozen, its pooled penultimate features (the vector its classifier sees) are computed
    # once for both splits of probe.data (inference mode, no augmentation), and a linear
    # classifier with bias is trained on them; its top-1 test accuracy goes to
    # <workdir>/linear_probe.json. The recipe of CRD's transfer experiment, which CAT-KD repeats.
    config.probe = ml_collections.ConfigDict()
    # The probe data set, in config.data's fields (create_source reads it in place of config.data;
    # a field not named here is config.data's). STL-10 (the default): TFDS 'stl10', 5,000 train
    # and 8,000 test 96x96 images of 10 classes (needs an 'stl10' entry in catkd_jax.data.DATASETS).
    # TinyImageNet: source 'folder', dir ROOT with ROOT/train/<wnid>/*.JPEG and the validation
    # images sorted into ROOT/test/<wnid>/ (200 classes, 64x64), name 'cifar100' (for folders the
    # name only picks the normalisation: here the student's own).
    config.probe.data = ml_collections.ConfigDict()
    config.probe.data.name = "stl10"
    config.probe.data.source = "tfds"
    config.probe.data.dir = ""
    config.probe.data.reserved_classes = 0
    config.probe.data.reserved_rate = 1.0
    config.probe.data.synthetic_train_size = 1024
    config.probe.data.synthetic_test_size = 256
    # Images are resized to image_size x image_size (bilinear, antialiased) before the network
    # sees them, as CRD downsamples both data sets to 32x32; 0 keeps them as stored.
    config.probe.data.image_size = 32
    # SGD with momentum on mean cross-entropy, a new shuffle each epoch (from config.seed); the
    # learning rate is constant within an epoch, times decay_rate after each of decay_epochs.
    config.probe.epochs = 40
    config.probe.batch_size = 128
    config.probe.lr = 0.1
    config.probe.decay_epochs = (10, 20, 30)
    config.probe.decay_rate = 0.1
    config.probe.momentum = 0.9
    config.probe.weight_decay = 0.0

    return config
