"""A reduced-scale real-image experiment: does CAT-KD help on CIFAR-10 under a fixed budget?

Trains, for each seed, a teacher, a vanilla student, a KD student and a CAT-KD student with the
same recipe on the CIFAR-10 JPEGs (or any folder data set with train/ and test/ class
sub-folders), then reports the mean and standard deviation over seeds of each one's best test
accuracy.

    python benchmarks/cifar10_proxy.py --scale cpu      # about an hour on 2 CPU cores
    python benchmarks/cifar10_proxy.py --scale full     # all images, the full recipe (a GPU)

--data accepts the `cifar10-jpeg.tar.gz` archive (the needed images are extracted once into
--cache) or an extracted folder. Results go to --workdir (summary.json, one run per folder).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tarfile

from catkd_jax import default_config as default, runs, training

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"

# Each scale: images per class kept (train, test), epochs, lr decay epochs, architectures.
SCALES = {
    # Sized to about an hour on 2 CPU cores: a tenth of the training images, a fifth of the
    # test images, 10 epochs with one decay.
    "cpu": dict(train_per_class=500, test_per_class=200, epochs=10, decay_epochs=(7,),
                teacher="resnet20", student="resnet8"),
    # The CIFAR recipe of the paper on all images (resnet56 -> resnet20 is one of its pairs).
    "full": dict(train_per_class=None, test_per_class=None, epochs=240, decay_epochs=(150, 180, 210),
                 teacher="resnet56", student="resnet20"),
}


def prepare_folder(data: pathlib.Path, cache: pathlib.Path, train_per_class, test_per_class) -> pathlib.Path:
    """A folder data set with at most the given images per class (extracted once from a tarball)."""
    if data.is_dir():
        if train_per_class is None and test_per_class is None:
            return data
        raise ValueError("--scale cpu subsamples the archive: pass the .tar.gz, not a folder")
    limits = {"train": train_per_class, "test": test_per_class}
    root = cache / f"cifar10_{train_per_class}_{test_per_class}"
    if (root / "complete").exists():
        return root
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(data) as archive:
        for member in archive:
            parts = pathlib.PurePosixPath(member.name).parts  # cifar10-jpeg/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4:
                continue
            split, label = parts[1], parts[2]
            key = (split, label)
            if limits[split] is not None and counts.get(key, 0) >= limits[split]:
                continue
            counts[key] = counts.get(key, 0) + 1
            target = root / split / label / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    (root / "complete").touch()
    return root


def experiment_config(method: str, arch: str, seed: int, scale: dict, data_dir: pathlib.Path, teacher_dir=None):
    config = default.get_config()
    config.method = method
    config.seed = seed
    config.student.arch = arch
    # CAT-KD students are CAM-head networks without classifier bias, as in the paper.
    config.student.classifier_bias = method != "cat_kd"
    config.teacher.arch = scale["teacher"]
    config.teacher.checkpoint = str(teacher_dir) if teacher_dir else ""
    config.data.name = "cifar10"
    config.data.source = "folder"
    config.data.dir = str(data_dir)
    config.num_epochs = scale["epochs"]
    config.optim.decay_epochs = scale["decay_epochs"]
    config.eval_batch_size = 200
    config.checkpoint.every_epochs = scale["epochs"]
    # resnet56 -> resnet20 settings of the paper (beta 0.7, r 2, no normalisation); KD: T 4,
    # CE 0.1, KD 0.9 (the defaults).
    config.cat_kd.beta = 0.7
    config.cat_kd.resolution = 2
    config.cat_kd.normalize = False
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path("runs/cifar10_proxy_data"))
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    args = parser.parse_args()
    scale = SCALES[args.scale]
    workdir = args.workdir or pathlib.Path("runs") / f"cifar10_proxy_{args.scale}"
    data_dir = prepare_folder(args.data, args.cache, scale["train_per_class"], scale["test_per_class"])

    best: dict[str, list[float]] = {}
    for seed in args.seeds:
        teacher_dir = workdir / f"seed{seed}" / "teacher"
        networks = [
            ("teacher", "vanilla", scale["teacher"], teacher_dir, None),
            ("vanilla student", "vanilla", scale["student"], workdir / f"seed{seed}" / "vanilla", None),
            ("KD student", "kd", scale["student"], workdir / f"seed{seed}" / "kd", teacher_dir),
            ("CAT-KD student", "cat_kd", scale["student"], workdir / f"seed{seed}" / "cat_kd", teacher_dir),
        ]
        for name, method, arch, run_dir, teacher in networks:
            print(f"--- seed {seed}: {name} ({arch}, {method})", flush=True)
            config = experiment_config(method, arch, seed, scale, data_dir, teacher)
            best.setdefault(name, []).append(training.train_and_evaluate(config, run_dir)["best_test_acc"])

    rows = {name: dict(runs.mean_and_std(values), runs=values) for name, values in best.items()}
    lines = [f"CIFAR-10 proxy, scale {args.scale}, seeds {args.seeds}: best test accuracy (%)"]
    lines += [f"  {name:<16} {row['mean']:6.2f} ± {row['std']:.2f}   {row['runs']}" for name, row in rows.items()]
    print("\n".join(lines))
    (workdir / "summary.json").write_text(json.dumps(dict(scale=args.scale, settings=scale, seeds=args.seeds,
                                                          results=rows), indent=2) + "\n")
    print(f"Wrote {workdir / 'summary.json'} (the runs: {workdir})")


if __name__ == "__main__":
    main()
