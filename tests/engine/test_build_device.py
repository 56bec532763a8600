"""Process-wide device settings that build() makes from the config: only for their device."""

import torch

from dawntrain.config import resolve
from dawntrain.engine.build import build
from synthetic import tiny_dataset


def test_cudnn_benchmark_is_left_alone_by_a_cpu_run():
    before = torch.backends.cudnn.benchmark
    sets = ["device=cpu", "cudnn_benchmark=true", "width=8", "batch_size=32", "image_size=16"]
    config = resolve("fast", sets=sets)
    assert config.cudnn_benchmark is True
    build(config, tiny_dataset(size=16))
    assert torch.backends.cudnn.benchmark is before
