"""`dawntrain data ...`: convert any source to TFRecord shards, inspect records, download the
official archives, list and clear the decoded-array cache."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from dawntrain.cli.options import command
from dawntrain.errors import DataError


def cmd_data_convert(args: argparse.Namespace) -> int:
    from dawntrain.data.convert import convert

    manifest = convert(
        args.src,
        args.out,
        shards=args.shards,
        shard_size=args.shard_size,
        compression=args.compression,
        layout=args.layout,
        workers=args.workers,
        progress=not args.quiet,
    )
    for split, shards in manifest["splits"].items():
        size = sum((args.out / s["file"]).stat().st_size for s in shards)
        records = sum(s["records"] for s in shards)
        unlabelled = " (unlabelled)" if split in manifest["unlabelled"] else ""
        print(
            f"{split}: {records} records in {len(shards)} shard(s), {size / 1e6:.1f} MB{unlabelled}"
        )
    for note in manifest["notes"]:
        print(f"note: {note}")
    print(
        f"wrote {args.out / 'manifest.json'} ({manifest['layout']} layout, {len(manifest['classes'])} classes)"
    )
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from dawntrain.data.readers.records import first_bad_message, format_inspection, inspect
    from dawntrain.errors import RecordError

    report = inspect(args.paths, split=args.split, verify=args.verify)
    print(format_inspection(report), flush=True)
    bad = first_bad_message(report)
    if bad:
        raise RecordError(bad)
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from dawntrain.data import default_cache_dir
    from dawntrain.data.download import download_archive, mib
    from dawntrain.data.readers import ARCHIVES

    data_dir = default_cache_dir()
    directory = args.to or data_dir
    for name in dict.fromkeys(args.names):
        archive = ARCHIVES[name]
        there = (directory / archive.filename).exists()
        path = download_archive(archive, directory, progress=not args.quiet)
        *checks, last = archive.expected()
        checks = f"{', '.join(checks)} and {last}" if checks else last
        what = "already there" if there else "downloaded"
        print(f"{name}: {path} ({mib(path.stat().st_size)}), {what}, {checks} verified")
    if directory.resolve() != data_dir.resolve():
        print(
            f"to train with them, pass --data {directory}/FILE, or copy the files into the data "
            f"directory of the machine that trains (here {data_dir})"
        )
    return 0


def _age_seconds(text: str) -> float:
    """Seconds of an age on the command line: 30s, 45m, 12h, 7d (a bare number is days), 2w."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give an age like 30m, 12h, 7d or 2w")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match.group(2) or "d"]
    return float(match.group(1)) * unit


def _age(text: str) -> str:
    _age_seconds(text)  # refused at parse time, kept as typed for messages
    return text.strip()


def _age_text(seconds: float) -> str:
    for unit, size, up_to in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 2 * 86400)):
        if seconds < up_to:
            return f"{max(seconds, 0) / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def cmd_data_cache(args: argparse.Namespace) -> int:
    from fnmatch import fnmatchcase

    from dawntrain.data import cache
    from dawntrain.data.download import mib

    directory = args.dir or cache.default_cache_dir()
    found = cache.entries(directory)
    named = [e for e in found if not args.names or any(fnmatchcase(e.key, n) for n in args.names)]
    if args.names and not named:
        raise DataError(
            f"no cache entry in {directory / 'arrays'} is named {' or '.join(args.names)}; "
            "`dawntrain data cache` lists them"
        )
    now = time.time()
    oldest = None if args.older_than is None else _age_seconds(args.older_than)
    chosen = [e for e in named if oldest is None or e.age(now) > oldest]
    if not chosen:
        older = f" written over {args.older_than} ago" if named else ""
        print(f"no cached arrays in {directory / 'arrays'}{older}")
        if args.clear:
            cache.remove(directory, [])  # still clear what killed writers left
        return 0
    width = max(len(str(e.path)) for e in chosen)
    print(f"{'AGE':>5}  {'SIZE':>11}  {'PATH':<{width}}  SOURCE")
    for e in chosen:
        print(f"{_age_text(e.age(now)):>5}  {mib(e.size):>11}  {str(e.path):<{width}}  {e.source}")
    count = f"{len(chosen)} {'entry' if len(chosen) == 1 else 'entries'}"
    total = mib(sum(e.size for e in chosen))
    if args.clear:
        cache.remove(directory, chosen)
        print(f"removed {count} ({total}); downloaded archives are kept")
    else:
        print(f"{count}, {total}; --clear removes {'it' if len(chosen) == 1 else 'them'}")
    return 0


def add_parsers(sub) -> None:
    data = command(
        sub, "data", "convert to TFRecord shards; inspect records; download archives; the cache"
    )
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = command(
        data_sub,
        "convert",
        "write any source as <split>-0000i-of-0000N.tfrecord[.gz] + manifest.json",
    )
    p.add_argument(
        "src", help="cifar10 | sample | tiny-imagenet | a path (archive, folder, records)"
    )
    p.add_argument("--out", type=Path, required=True, help="a new directory for the shards")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shards", type=int, help="train shards (default 10, more past ~100 MB)")
    group.add_argument("--shard-size", type=int, help="records per shard, in every split")
    p.add_argument(
        "--compression", choices=["gzip", "zlib", "none"], default="gzip", help="of each shard"
    )
    p.add_argument("--layout", choices=["image", "seed"], default="image", help="record layout")
    p.add_argument("--workers", type=int, default=2, help="processes checking and writing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_convert)
    p = command(data_sub, "inspect", "record count, features, labels; --verify every record")
    p.add_argument("paths", nargs="+", metavar="PATH", help="converted directory, glob or file")
    p.add_argument("--split", help="only this split")
    p.add_argument("--verify", action="store_true", help="check every CRC, decode every image")
    p.set_defaults(func=cmd_data_inspect)
    _data_download_and_cache_parsers(data_sub)


DATA_DIR = "$DAWNTRAIN_DATA, else $XDG_CACHE_HOME/dawntrain, else ~/.cache/dawntrain"


DOWNLOAD_EPILOG = f"""The data directory is {DATA_DIR};
--data cifar10 and --data tiny-imagenet look for the archives there (and download them there
when they are missing). A download cut short keeps FILE.part, which the next call resumes.

examples:
  dawntrain data download cifar10 tiny-imagenet       # into the data directory
  dawntrain data download cifar10 --to /media/usb     # then copy it to the offline machine"""


CACHE_EPILOG = f"""The cache is DIR/arrays, DIR being the data directory:
{DATA_DIR}.
An entry holds one source's decoded arrays; a run whose entry was removed decodes its source
again. --clear never removes downloaded archives.

examples:
  dawntrain data cache                      # list the entries
  dawntrain data cache --older-than 30d --clear
  dawntrain data cache 'records-*' --clear  # entries by name (a glob)"""


def _data_download_and_cache_parsers(data_sub) -> None:
    p = command(
        data_sub,
        "download",
        "fetch official archives ahead of time: resumable, size and checksums checked",
        epilog=DOWNLOAD_EPILOG,
    )
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        choices=["cifar10", "tiny-imagenet"],
        help="cifar10 (cifar-10-python.tar.gz, 163 MiB) | tiny-imagenet "
        "(tiny-imagenet-200.zip, 237 MiB)",
    )
    p.add_argument(
        "--to", type=Path, metavar="DIR", help="where to put them (default: the data directory)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_data_download)
    p = command(
        data_sub,
        "cache",
        "list the decoded-array cache (age, size, path, source); --clear removes entries",
        epilog=CACHE_EPILOG,
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="only entries named so (globs: 'cifar*')"
    )
    p.add_argument(
        "--older-than",
        type=_age,
        metavar="AGE",
        help="only entries written longer ago than AGE: 30m, 12h, 7d, 2w",
    )
    p.add_argument(
        "--clear",
        action="store_true",
        help="remove the entries listed (all of them without NAME or --older-than)",
    )
    p.add_argument("--dir", type=Path, help="the data directory (default: see below)")
    p.set_defaults(func=cmd_data_cache)
