"""Every pixel of the toolkit and every dataset file, along one path: training, prediction and the benchmarks
all read images this way. Each step is a module of its own; this one gathers their names, so `data.X` is all a
caller needs (a test that patches a function patches it where it is defined, e.g. `decode.decode_image`).

    files         images.py   the layouts (a labels CSV + an image folder, or train/<class>/), label columns
                              (class names, tag lists, one-hot), the one CSV reader, ids matched to files:
                              find_labelled_images, find_test_images, read_csv, label_text, parse_labels
      -> pixels   decode.py   decoded once (the one BGR->RGB) into a memory-mapped cache: load_images
      -> batches  batches.py  splits (iterative for multi-label), statistics, the one batch path:
                              stratified_split, label_matrix, channel_stats, batches
      -> input    batches.py  Preprocess: 0..1 floats, augmented (Augment, Mix), normalised
    demo.py: the demo competition, Fashion-MNIST in the CSV layout: write_fashion_mnist

    python data.py fashion-mnist data/fashion-mnist   # write the demo competition
    python data.py info DIR                            # show what a dataset folder holds
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from batches import (Augment, Mix, Preprocess, batches, channel_stats, check_balance, count_batches,  # noqa: F401
                     iterate_batches, label_matrix, normalize, prefetch, resident, stratified_folds, stratified_split,
                     to_float, tta_views)
from decode import (CACHE_VERSION, ImageArray, cache_dir_for, cache_key, decode_image, images_per_chunk,  # noqa: F401
                    is_writable, load_images, reserve_space, user_cache_dir)
from demo import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx, write_fashion_mnist  # noqa: F401
from errors import DataError, explain
from images import (ID_COLUMNS, IMG_EXTENSIONS, LABEL_COLUMNS, LABEL_FILES, TEST_DIRS, TRAIN_DIRS,  # noqa: F401
                    CsvTable, FileIndex, LabelledImages, find_labelled_images, find_test_folder, find_test_images,
                    index_test_images, label_text, listing, match_ids, natural_key, parse_labels,
                    read_csv)


def describe(root: str | Path, id_col=None, label_col=None, labels_file=None, train_dir=None, multi_label=None,
             test_dir=None) -> str:
    """What the dataset folder `root` holds: its layout, the labels found (single- or multi-label), images per
    class, notes and test images."""
    found = find_labelled_images(root, id_col, label_col, labels_file, train_dir, multi_label)
    counts = label_matrix(found.labels, len(found.class_names)).sum(axis=0).astype(int)
    kind = ", multi-label" if found.multi_label else ""
    lines = [f"{root}: {found.layout} layout, {len(found.files)} training images, {len(found.class_names)} "
             f"classes{kind}", found.summary]
    lines += [f"  {name!r}: {n}" for name, n in zip(found.class_names, counts)]
    lines += found.notes
    try:
        lines.append(f"test images: {len(find_test_images(root, test_dir))}")
    except DataError as e:
        lines.append(str(e))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("fashion-mnist", help="write the Fashion-MNIST demo competition to DIR")
    demo.add_argument("dir")
    demo.add_argument("--source", type=Path, default=None, help=f"folder of the idx .gz files (default {FASHION_MNIST_DIR})")
    demo.add_argument("--limit", type=int, default=None, help="keep only the first N images of each split")
    info = sub.add_parser("info", help="show what a dataset folder holds")
    info.add_argument("dir")
    info.add_argument("--id-col")
    info.add_argument("--label-col")
    info.add_argument("--labels", metavar="FILE", help="the labels CSV (default: the first of "
                      f"{', '.join(LABEL_FILES)})")
    info.add_argument("--train-dir", metavar="DIR", help=f"the training images (default: the first of "
                      f"{', '.join(TRAIN_DIRS)})")
    info.add_argument("--test-dir", metavar="DIR", help=f"the test images (default: the first of {', '.join(TEST_DIRS)})")
    info.add_argument("--multi-label", action=argparse.BooleanOptionalAction, default=None,
                      help="labels are space-separated tag lists (default: detected)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fashion-mnist":
            write_fashion_mnist(args.dir, args.source, args.limit)
        else:
            print(describe(args.dir, args.id_col, args.label_col, args.labels, args.train_dir, args.multi_label,
                           args.test_dir))
    except DataError as e:
        sys.exit(f"error: {explain(e)}")


if __name__ == "__main__":
    main()
