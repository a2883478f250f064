"""Images/s of the training input pipeline alone (shuffle, augmentation, batching).

    python benchmarks/input_pipeline.py --source folder --dir DIR [--epochs 2] [--json]
    python benchmarks/input_pipeline.py --source tfds-mock            # TFDS mock CIFAR-100 data
    python benchmarks/input_pipeline.py --source synthetic|shapes

No model runs: it measures how fast `DataSource.train_batches` delivers host batches, to
compare with the train step's images/s (benchmarks/throughput.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from catkd_jax import default_config as default
from catkd_jax.data import create_source


def run(args: argparse.Namespace) -> dict:
    config = default.get_config()
    config.batch_size = args.batch_size
    config.data.name = args.name
    config.data.source = "tfds" if args.source == "tfds-mock" else args.source
    config.data.dir = args.dir
    config.data.synthetic_train_size = args.size
    mock = contextlib.nullcontext()
    if args.source == "tfds-mock":
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        mock = tfds.testing.mock_data(num_examples=args.size)
    with mock:
        started = time.perf_counter()
        source = create_source(config)
        load_seconds = time.perf_counter() - started
    images = 0
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for batch in source.train_batches(epoch):
            images += len(batch["label"])
    seconds = time.perf_counter() - started
    return {
        "source": args.source,
        "batch_size": args.batch_size,
        "train_examples": source.num_train,
        "load_seconds": load_seconds,
        "images_per_sec": images / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="tfds-mock", choices=["tfds-mock", "tfds", "folder", "synthetic", "shapes"])
    parser.add_argument("--name", default="cifar100", help="data.name: cifar100 or cifar10")
    parser.add_argument("--dir", default="", help="data.dir: TFDS data_dir or the folder root")
    parser.add_argument("--size", type=int, default=10000, help="examples of mock/synthetic/shapes data")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result) if args.json else "\n".join(f"{k:>16}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
