"""One reader per kind of source, each a module with `matches(source) -> bool` and
`read(source, options: ReadOptions) -> ImageDataset` (options.py):

  records        a directory of TFRecord shards (with or without manifest.json), a glob of
                 record files, or a .tfrecord* file
  tiny_imagenet  'tiny-imagenet', or tiny-imagenet-200/ or its .zip/.tar.gz
  cifar          'cifar10': the official python archive, from the cache directory or downloaded
  folder         any other path: an image folder (or its .tar/.tar.gz/.zip; 'sample' is one), or
                 a folder or archive holding CIFAR-10's official batch files

`reader_for` asks them in that order; the first that claims a source reads it. cifar and folder
also give a source's undecoded contents (`raw`), and tiny_imagenet its listing, for conversion.
ARCHIVES: the official archive of each built-in name ('cifar10', 'tiny-imagenet').
"""

from __future__ import annotations

from types import ModuleType

from dawntrain.data.readers import cifar, folder, records, tiny_imagenet

READERS = (records, tiny_imagenet, cifar, folder)
# The official archives a source name downloads (`dawntrain data download NAME`).
ARCHIVES = {archive.name: archive for archive in (cifar.ARCHIVE, tiny_imagenet.ARCHIVE)}


def reader_for(source: str) -> ModuleType:
    """The reader module of a source name or path (folder, the last, takes any)."""
    return next(reader for reader in READERS if reader.matches(str(source)))
