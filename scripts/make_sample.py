"""Build src/dawntrain/data/sample/cifar10-sample.tar.gz from the CIFAR-10 JPEG tarball.

Takes the first 500 train and 100 test images of each class (by sorted file name), keeps their
original JPEG bytes, and writes them as train/<class>/NNNN.jpg, test/<class>/NNNN.jpg into one
tar with fixed metadata (mtime 0, root owner, mode 644), gzipped with a zero header mtime, so
the output is byte-for-byte reproducible. Gzip matters: each 921-byte JPEG costs a 512-byte
tar header plus padding, 9.3 MB uncompressed against 2 MB compressed.

    python scripts/make_sample.py [--source ../shared/data/cifar10-jpeg.tar.gz] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO / "src" / "dawntrain" / "data" / "sample" / "cifar10-sample.tar.gz"
PER_CLASS = {"train": 500, "test": 100}


def select(source: Path) -> dict[str, bytes]:
    """{train|test/<class>/<file>: JPEG bytes} for the first PER_CLASS[split] files per class."""
    by_class: dict[tuple[str, str], dict[str, bytes]] = {}
    with tarfile.open(source, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            # cifar10-jpeg/<split>/<class>/<file>
            if member.isfile() and len(parts) == 4 and parts[1] in PER_CLASS:
                class_files = by_class.setdefault((parts[1], parts[2]), {})
                class_files[parts[3]] = tar.extractfile(member).read()
    chosen = {}
    for (split, name), files in sorted(by_class.items()):
        keep = sorted(files)[: PER_CLASS[split]]
        if len(keep) < PER_CLASS[split]:
            raise SystemExit(f"{source}: {split}/{name} has only {len(keep)} images")
        chosen.update({f"{split}/{name}/{f}": files[f] for f in keep})
    return chosen


def write_tar(files: dict[str, bytes], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(files[name]))
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    files = select(args.source)
    write_tar(files, args.out)
    counts = {s: sum(n.startswith(f"{s}/") for n in files) for s in PER_CLASS}
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {counts}, {args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")


if __name__ == "__main__":
    main()
