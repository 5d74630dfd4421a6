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
    python data.py show DIR [--out FILE] [--per-class N] [--img-size S]   # draw training images as the network sees them
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cli
from batches import (Augment, Mix, Preprocess, batches, channel_stats, check_balance, check_folds,  # noqa: F401
                     count_batches, iterate_batches, label_matrix, normalize, prefetch, resident, stratified_folds,
                     stratified_split, to_float, tta_views)
from decode import (CACHE_VERSION, ImageArray, cache_dir_for, cache_key, decode_image, images_per_chunk,  # noqa: F401
                    is_writable, load_images, reserve_space, user_cache_dir)
from demo import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx, write_fashion_mnist  # noqa: F401
from errors import DataError, UsageError, explain
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
    lines += [f"warning: {warning}" for warning in found.warnings]
    try:
        lines.append(f"test images: {len(find_test_images(root, test_dir))}")
    except DataError as e:
        lines.append(str(e))
    return "\n".join(lines)


def _add_layout_options(parser: argparse.ArgumentParser):
    """The options that find a dataset's labels and images when they are not the usual names (as training's)."""
    parser.add_argument("dir", help="the dataset folder")
    parser.add_argument("--id-col", help="id column of the labels CSV (default: detected)")
    parser.add_argument("--label-col", help="label column of the labels CSV (default: detected)")
    parser.add_argument("--labels", metavar="FILE", help="the labels CSV (default: the first of "
                        f"{', '.join(LABEL_FILES)})")
    parser.add_argument("--train-dir", metavar="DIR", help=f"the training images (default: the first of "
                        f"{', '.join(TRAIN_DIRS)})")
    parser.add_argument("--multi-label", action=argparse.BooleanOptionalAction, default=None,
                        help="labels are space-separated tag lists (default: detected)")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(prog="data.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("fashion-mnist", help="write the Fashion-MNIST demo competition to DIR")
    demo.add_argument("dir", help="the folder to write the competition into")
    demo.add_argument("--source", type=Path, default=None, help=f"folder of the idx .gz files (default {FASHION_MNIST_DIR})")
    demo.add_argument("--limit", type=cli.int_in(1), default=None, help="keep only the first N images of each split "
                      "(default: all)")
    info = sub.add_parser("info", help="show what a dataset folder holds")
    _add_layout_options(info)
    info.add_argument("--test-dir", metavar="DIR", help=f"the test images (default: the first of {', '.join(TEST_DIRS)})")
    show = sub.add_parser("show", help="draw a few training images per class as the network receives them")
    _add_layout_options(show)
    show.add_argument("--out", metavar="FILE", help="the PNG to write (default: DIR's name + -show.png, in the "
                      "working folder)")
    show.add_argument("--per-class", type=int, default=4, metavar="N", help="images per class")
    show.add_argument("--img-size", type=int, default=None, metavar="S", help="the size training would resize to "
                      "(default: as a new run on a CPU chooses it from the images; give the size your script trains at; the "
                      "images are decoded into the cache training uses)")
    show.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                      help="which images, and their augmentation")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fashion-mnist":
            write_fashion_mnist(args.dir, args.source, args.limit)
        elif args.command == "info":
            print(describe(args.dir, args.id_col, args.label_col, args.labels, args.train_dir, args.multi_label,
                           args.test_dir))
        else:
            import preview  # it draws with runs.py, which reads data: imported by this command alone
            print(preview.save_data_preview(args.dir, args.out, args.per_class, args.img_size, args.seed,
                                            id_col=args.id_col, label_col=args.label_col, labels_file=args.labels,
                                            train_dir=args.train_dir, multi_label=args.multi_label))
    except UsageError as e:
        sys.exit(f"error: {explain(e)}")


if __name__ == "__main__":
    cli.run(main)
