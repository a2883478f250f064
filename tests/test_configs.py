"""Experiment configs: each loads like `main.py` loads it, only overrides fields of
`catkd_jax/default_config.py`, names real architectures and teacher configs, and the CAT-KD pairs carry
the original settings (read from docs/original_settings.md)."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from catkd_jax import methods
from catkd_jax.methods import base, review
from catkd_jax.models import canonical_name, create_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")
METHODS = tuple(methods.METHODS)
DISTILLATION = tuple(name for name in METHODS if methods.needs_teacher(name))

def _load(path: pathlib.Path) -> ml_collections.ConfigDict:
    """Loads a config file by path, as `config_flags.DEFINE_config_file` does."""
    spec = importlib.util.spec_from_file_location(f"_test_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


@pytest.fixture(scope="module")
def default_keys() -> set[str]:
    return _flat_keys(_load(CONFIG_DIR / "default.py").to_dict())


def _ids(paths):
    return [p.stem for p in paths]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_only_overrides_default_fields(path, default_keys):
    keys = _flat_keys(_load(path).to_dict())
    assert keys == default_keys, (
        f"added: {sorted(keys - default_keys)}; missing: {sorted(default_keys - keys)}"
    )


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_names_are_valid(path):
    config = _load(path)
    assert config.method in METHODS
    canonical_name(config.student.arch)  # raises ValueError on an unknown name
    teacher_arch = canonical_name(config.teacher.arch)
    if config.method not in DISTILLATION or config.pipeline == "quickstart" or path.stem == "default":
        return  # the quickstart trains its teacher itself; default.py names no teacher config

    teacher_path = pathlib.Path(config.teacher.config)
    assert teacher_path.parent == path.resolve().parent  # beside the config, wherever it is run from
    assert teacher_path.is_file(), f"teacher.config {config.teacher.config} does not exist"
    teacher = _load(teacher_path)
    assert teacher.method == "vanilla"
    assert canonical_name(teacher.student.arch) == teacher_arch
    assert teacher.student.classifier_bias  # published teachers: biased linear classifier


def _original_pairs() -> list[tuple[str, str, float, float, int, bool]]:
    """The CAT-KD pair table of original_settings.md: (teacher, student, lr, beta, r, normalize)."""
    text = (REPO_ROOT / "docs" / "original_settings.md").read_text()
    table = text.split("| teacher | student | lr | β | r | normalize |")[1].split("\n\n")[0]
    pairs = []
    for line in table.strip().splitlines()[1:]:  # after the |---| row
        teacher, student, lr, beta, resolution, normalize = (cell.strip() for cell in line.strip("|").split("|"))
        pairs.append((teacher, student, float(lr), float(beta), int(resolution), {"yes": True, "no": False}[normalize]))
    return pairs


def test_cat_kd_pairs_match_original_settings():
    pairs = _original_pairs()
    assert len(pairs) == 11, "the table of original_settings.md was not read whole"
    # default.py holds every field's default (itself resnet32x4 -> resnet8x4), not an experiment.
    configs = {path.stem: _load(path) for path in CONFIG_FILES if path.stem != "default"}
    for teacher, student, lr, beta, resolution, normalize in pairs:
        # The pair's CAT-KD config (not a CAT-only study: those have CE weight 0), with the
        # teacher of the original tables (not Table 4's strong one).
        stems = [stem for stem, config in configs.items()
                 if config.method == "cat_kd" and config.cat_kd.ce_weight == 1.0
                 and (config.teacher.arch, config.student.arch) == (teacher, student)
                 and config.teacher.config == str(REPO_ROOT / "configs" / f"cifar100_teacher_{teacher}.py")]
        assert len(stems) == 1, f"{teacher} -> {student}: CAT-KD configs {stems}, expected exactly one"
        config = configs[stems[0]]
        assert config.optim.lr == pytest.approx(lr), stems
        assert config.cat_kd.beta == pytest.approx(beta), stems
        assert config.cat_kd.resolution == resolution, stems
        assert config.cat_kd.normalize is normalize, stems
        assert config.student.classifier_bias is False  # CAM-head students
        assert config.teacher.checkpoint == ""
        # The shared recipe of the table.
        assert config.num_epochs == 240 and config.batch_size == 64
        assert tuple(config.optim.decay_epochs) == (150, 180, 210)
        assert config.optim.weight_decay == pytest.approx(5e-4)
        assert config.optim.momentum == pytest.approx(0.9)


def _original_dkd_pairs() -> list[tuple[str, str, float, float]]:
    """The DKD pair table of original_settings.md: (teacher, student, lr, beta)."""
    text = (REPO_ROOT / "docs" / "original_settings.md").read_text()
    table = text.split("| teacher | student | lr | β |\n")[1].split("\n\n")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[1:]]
    return [(teacher, student, float(lr), float(beta)) for teacher, student, lr, beta in rows]


def test_dkd_pairs_match_original_settings():
    pairs = _original_dkd_pairs()
    assert len(pairs) == 11, "the DKD table of original_settings.md was not read whole"
    configs = {path.stem: _load(path) for path in CONFIG_FILES if path.stem.startswith("cifar100_dkd_")}
    assert len(configs) == len(pairs)
    for teacher, student, lr, beta in pairs:
        stems = [stem for stem, config in configs.items() if (config.teacher.arch, config.student.arch) == (teacher, student)]
        assert len(stems) == 1, f"{teacher} -> {student}: DKD configs {stems}, expected exactly one"
        config = configs[stems[0]]
        assert config.method == "dkd" and config.student.classifier_bias is True
        assert config.teacher.config == str(REPO_ROOT / "configs" / f"cifar100_teacher_{teacher}.py")
        assert (config.optim.lr, config.dkd.beta) == (pytest.approx(lr), pytest.approx(beta)), stems
        # CFG.DKD's defaults, which no CIFAR-100 config of the original changes.
        assert (config.dkd.ce_weight, config.dkd.alpha, config.dkd.temperature, config.dkd.warmup_epochs) == (
            1.0, 1.0, 4.0, 20), stems
        assert config.num_epochs == 240 and config.batch_size == 64
        assert tuple(config.optim.decay_epochs) == (150, 180, 210)
        assert config.optim.weight_decay == pytest.approx(5e-4) and config.optim.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("stem, beta", [("imagenet_dkd_res34_res18", 0.5), ("imagenet_dkd_res50_mobilenet", 2.0)])
def test_imagenet_dkd_configs_match_the_originals(stem, beta):
    config = _load(CONFIG_DIR / f"{stem}.py")
    assert config.method == "dkd" and config.student.classifier_bias is True
    assert (config.dkd.ce_weight, config.dkd.alpha, config.dkd.beta, config.dkd.temperature,
            config.dkd.warmup_epochs) == (1.0, 1.0, beta, 1.0, 1)
    assert (config.optim.lr, config.batch_size, config.num_epochs) == (pytest.approx(0.2), 512, 100)
    assert tuple(config.optim.decay_epochs) == (30, 60, 90) and config.optim.weight_decay == pytest.approx(1e-4)


# (stem, lr, batch, REVIEWKD_WEIGHT, WARMUP_EPOCHS, STU_PREACT): the ReviewKD table of original_settings.md.
REVIEWKD_CONFIGS = [("cifar100_reviewkd_res32x4_res8x4", 0.05, 64, 5.0, 20, False),
                    ("cifar100_reviewkd_res32x4_shuv1", 0.01, 64, 1.0, 20, False),
                    ("imagenet_reviewkd_res34_res18", 0.1, 256, 1.0, 1, True),
                    ("imagenet_reviewkd_res50_mobilenet", 0.1, 256, 8.0, 1, True)]


@pytest.mark.parametrize("stem, lr, batch_size, weight, warmup_epochs, preact", REVIEWKD_CONFIGS,
                         ids=[case[0] for case in REVIEWKD_CONFIGS])
def test_reviewkd_configs_match_the_originals_and_fit_their_networks(stem, lr, batch_size, weight, warmup_epochs,
                                                                     preact):
    """The original reads ReviewKD's lists from its config; each config's fit its networks at its
    image size (which also holds them to the original's: no other lists fit)."""
    config = _load(CONFIG_DIR / f"{stem}.py")
    settings = config.reviewkd
    assert config.method == "reviewkd" and config.student.classifier_bias is True
    assert (config.optim.lr, config.batch_size, settings.ce_weight, settings.reviewkd_weight, settings.warmup_epochs,
            settings.stu_preact) == (pytest.approx(lr), batch_size, 1.0, weight, warmup_epochs, preact)
    assert config.optim.lr_batch_size in (0, batch_size)  # the original's lr at the original's batch
    size = config.data.image_size or 32
    student, teacher = (base.stage_shapes(create_model(arch, 100), (size, size, 3))
                        for arch in (config.student.arch, config.teacher.arch))
    fitted = review.fitting_settings(student, teacher, settings)
    assert settings.shapes[0] == 1 and fitted == {name: tuple(settings[name]) for name in fitted}


def test_kd_configs_keep_cfg_kd_and_the_toolboxs_recipe_for_each_dkd_pair():
    """KD for every pair the original's DKD configs cover (its kd.yaml: resnet32x4 -> resnet8x4):
    CFG.KD's settings, lr 0.01 for MobileNet/ShuffleNet students, 0.05 otherwise."""
    kd, dkd = ({(config.teacher.arch, config.student.arch): config for config in
                (_load(path) for path in CONFIG_FILES if path.stem.startswith(f"cifar100_{method}_"))}
               for method in ("kd", "dkd"))
    assert kd.keys() == dkd.keys() and len(kd) == 11
    for (teacher, student), config in kd.items():
        assert config.method == "kd" and config.student.classifier_bias is True
        assert (config.kd.temperature, config.kd.ce_weight, config.kd.kd_weight) == (4.0, 0.1, 0.9)
        lr = 0.01 if student.startswith(("MobileNet", "Shuffle")) else 0.05
        assert config.optim.lr == pytest.approx(lr), (teacher, student)
        assert config.teacher.config == dkd[teacher, student].teacher.config
        assert (config.num_epochs, config.batch_size, tuple(config.optim.decay_epochs)) == (240, 64, (150, 180, 210))


_CFG_OFD = {"ofd.ce_weight": 1.0, "ofd.feat_weight": 1e-3, "ofd.connector_kernel_size": 1}
_CFG_CRD = {"crd.ce_weight": 1.0, "crd.feat_weight": 0.8, "crd.feat_dim": 128, "crd.num_negatives": 16384,
            "crd.momentum": 0.5, "crd.temperature": 0.07, "crd.mode": "exact"}
_KD_IMAGENET = {"kd.temperature": 1.0, "kd.ce_weight": 0.5, "kd.kd_weight": 0.5}
_CFG_AT = {"at.ce_weight": 1.0, "at.feat_weight": 1000.0, "at.p": 2}
# (stem, lr, batch, lr milestones, weight decay, method settings): the OFD, CRD, AT and KD table of
# original_settings.md.
BASELINE_CONFIGS = [
    ("cifar100_ofd_res32x4_res8x4", 0.05, 64, (150, 180, 210), 5e-4, _CFG_OFD),
    ("cifar100_ofd_res32x4_shuv2", 0.01, 64, (150, 180, 210), 5e-4, _CFG_OFD),
    ("imagenet_ofd_res50_mobilenet", 0.05, 128, (30, 60, 90), 1e-4, _CFG_OFD | {"ofd.feat_weight": 1e-4}),
    ("cifar100_crd_res32x4_res8x4", 0.05, 64, (150, 180, 210), 5e-4, _CFG_CRD),
    ("cifar100_crd_res32x4_shuv1", 0.01, 64, (150, 180, 210), 5e-4, _CFG_CRD | {"crd.student_dim": 960}),
    ("imagenet_crd_res34_res18", 0.1, 256, (150, 180, 210), 1e-4, _CFG_CRD),
    ("imagenet_crd_res50_mobilenet", 0.1, 256, (150, 180, 210), 1e-4, _CFG_CRD),
    ("imagenet_at_res34_res18", 0.2, 512, (30, 60, 90), 1e-4, _CFG_AT),
    ("imagenet_at_res50_mobilenet", 0.2, 512, (30, 60, 90), 1e-4, _CFG_AT),
    ("imagenet_kd_res34_res18", 0.2, 512, (30, 60, 90), 1e-4, _KD_IMAGENET),
    ("imagenet_kd_res50_mobilenet", 0.2, 512, (30, 60, 90), 1e-4, _KD_IMAGENET),
]


@pytest.mark.parametrize("stem, lr, batch_size, milestones, weight_decay, settings", BASELINE_CONFIGS,
                         ids=[case[0] for case in BASELINE_CONFIGS])
def test_baseline_configs_match_the_originals(stem, lr, batch_size, milestones, weight_decay, settings):
    """The recipe and method settings of the original's file for the pair (CFG's where it sets
    none); CRD's embedding inputs are the networks' widths; OFD's teacher is not folded."""
    config = _load(CONFIG_DIR / f"{stem}.py")
    method = stem.split("_")[1]
    assert config.method == method and config.student.classifier_bias is True
    assert (config.optim.lr, config.batch_size, tuple(config.optim.decay_epochs), config.optim.weight_decay) == (
        pytest.approx(lr), batch_size, milestones, pytest.approx(weight_decay))
    assert config.optim.lr_batch_size in (0, batch_size)  # the original's lr at the original's batch
    for dotted, value in settings.items():
        section, name = dotted.split(".")
        assert config[section][name] == (pytest.approx(value) if isinstance(value, float) else value), dotted
    assert config.teacher.fold_batch_norm is (method != "ofd")
    student, teacher = create_model(config.student.arch, 100), create_model(config.teacher.arch, 100)
    for dotted, value in methods.fitted_settings(method, student, teacher).items():
        section, name = dotted.split(".")
        assert config[section][name] == value, dotted


# ml_collections loads config files with the deprecated `SourceFileLoader.load_module`.
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_parses_like_main(path):
    """`main.py`'s flag: a locked config file plus a command-line override."""
    argv = ["main.py", f"--config={path}", "--config.cat_kd.beta=3.5"]
    flag_values = flags.FlagValues()
    # sys_argv: overrides are otherwise read from the real sys.argv (pytest's).
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.cat_kd.beta == 3.5
    assert config.method in METHODS
    with pytest.raises(AttributeError):  # locked: a misspelt field is an error
        config.cat_kd.betaa = 1.0


def test_a_config_names_its_teacher_config_beside_itself_from_any_directory(tmp_path, monkeypatch):
    from catkd_jax import config_files  # pylint: disable=import-outside-toplevel

    copy = tmp_path / "my_configs"  # a copy of two configs, as outside the repository
    copy.mkdir()
    for name in ("cifar100_res32x4_res8x4.py", "cifar100_teacher_resnet32x4.py"):
        (copy / name).write_text((CONFIG_DIR / name).read_text())
    monkeypatch.chdir(tmp_path)
    config = config_files.load_config("my_configs/cifar100_res32x4_res8x4.py")
    assert config.teacher.config == str(copy / "cifar100_teacher_resnet32x4.py")
    assert config_files.load_config(config.teacher.config).student.arch == "resnet32x4"
