"""Benchmark 7, the cache's change detection: what it costs to tell whether the decoded-image cache still
matches the files, on the demo's 70,000 images (60,000 training + 10,000 test).

    python bench/cache_check.py            # every file, 7 repeats
    python bench/cache_check.py --quick    # every file, 3 repeats

Every run and every prediction checks the cache before using it: data.cache_key stats each file and hashes
its path, size, modification time, inode and status-change time (the last two catch a file rewritten with its
old size and modification time put back, as cp -p, tar and unzip leave it). Side by side, in turns:
- "size + mtime": the key before inode and ctime were added (the same stat call, fewer fields hashed);
- "head + tail hash": the alternative the issue names, reading and hashing each file's first and last 4 KiB;
- "warm load": data.load_images from a warm cache, all a repeated run spends to get its pixels.
Files are read once beforehand, so every variant finds them in the OS page cache.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import common  # puts the repository root on sys.path

import data


def key_size_mtime(files: list[Path]) -> str:
    """The cache key before this version: path, size and modification time."""
    digest = hashlib.sha256()
    for path in files:
        st = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:12]


def key_head_tail(files: list[Path], block: int = 4096) -> str:
    """A content key: each file's size and its first and last `block` bytes."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            head = f.read(block)
            size = f.seek(0, os.SEEK_END)
            if size > block:
                f.seek(max(block, size - block))
                head += f.read(block)
        digest.update(f"{os.path.abspath(path)}\0{size}\0".encode() + head)
    return digest.hexdigest()[:12]


def main(argv=None):
    parser = common.build_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=None, help="measurements of each (default 7, quick 3)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    root = common.demo_dir(args.data)
    files = data.find_labelled_images(root).files + data.find_test_images(root)
    common.read_files(files)
    n = len(files)
    report = common.Report("7. Cache change detection", args)

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        data.load_images(files, 28, cache_dir=tmp, progress=False)  # the warm cache
        variants = {
            "this version: size + mtime + inode + ctime": lambda: data.cache_key(files, 28, None),
            "before: size + mtime": lambda: key_size_mtime(files),
            "head + tail hash (4 KiB each)": lambda: key_head_tail(files),
            "warm load (key + mapping the cache)": lambda: data.load_images(files, 28, cache_dir=tmp, progress=False),
        }
        seconds = {name: [] for name in variants}
        for r in range(repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
            print(f"repeat {r + 1}: " + ", ".join(f"{k.split(':')[0]} {v[-1]:.2f} s" for k, v in seconds.items()),
                  flush=True)

    median = {name: common.median(v) for name, v in seconds.items()}
    ours, before = median["this version: size + mtime + inode + ctime"], median["before: size + mtime"]
    rows = [[name, f"{median[name]:.3f} ({min(v):.3f}-{max(v):.3f})", f"{n / median[name]:,.0f}",
             f"{median[name] / before:.2f}x"] for name, v in seconds.items()]
    report.table(f"checking the cache of the demo's {n:,} files (seconds: median of {repeats}, range)",
                 ["key", "seconds", "files/s", "vs before"], rows)
    report.target("change detection vs the previous key (size + mtime)", ours / before, 1.25, unit="x",
                  higher_is_better=False, note=f"{ours:.2f} s for {n:,} files")
    report.note(f"a content hash of each file's head and tail would cost "
                f"{median['head + tail hash (4 KiB each)'] / ours:.1f}x this version's key, from the page cache "
                "(more from a cold disk); inode + ctime catch the same rewrites for the price of one stat.")
    report.finish()
    return report


if __name__ == "__main__":
    main()
