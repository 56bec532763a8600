"""Write the cifar10/{train,test}.pt files that airbench94_muon's CifarLoader reads (uint8 NHWC
images, int64 labels, class names) from any source dawntrain reads, so that the public recipe
and dawntrain train on the same decoded images.

    python make_data.py ../shared/data/cifar10-jpeg.tar.gz cifar10
"""

import sys
from pathlib import Path

import numpy as np
import torch

from dawntrain.data.loading import load


def main(source: str, out: Path) -> None:
    data = load(source)
    out.mkdir(parents=True, exist_ok=True)
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        torch.save(
            {
                "images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(np.asarray(labels)).long(),
                "classes": list(data.class_names),
            },
            out / f"{split}.pt",
        )
        print(f"{out / split}.pt: {len(labels)} images")


# The guard matters: the first load decodes the JPEGs in worker processes, which import this file.
if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
