"""Data: every source decodes once into uint8 arrays that the training engine keeps on its device.

  load(source)      any source, as an ImageDataset (the readers: dawntrain.data.readers)
  checked(source)   the data a run trains on: loaded, labels checked, images at the model's side
  ImageDataset      train/test images (uint8 NHWC), int64 labels, class names, source
  default_cache_dir where arrays are cached and archives looked for and downloaded
                    ($DAWNTRAIN_DATA, else $XDG_CACHE_HOME/dawntrain, else ~/.cache/dawntrain)

Modules: dataset (ImageDataset and its checks), images (decoding, resizing, worker pools),
cache (and its listing), download (resumable, checked), batches (device batches and
normalization), codec/ (TFRecord, tf.train.Example, image records), readers/ (one per kind of
source), convert (the record writer, `dawntrain data`).
"""

from __future__ import annotations

from dawntrain.data.cache import default_cache_dir
from dawntrain.data.dataset import ImageDataset
from dawntrain.data.loading import checked, load

__all__ = ["ImageDataset", "checked", "default_cache_dir", "load"]
