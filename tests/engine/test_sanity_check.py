import math

import torch

from dawntrain.config import resolve
from dawntrain.engine.build import make_normalizer
from dawntrain.engine.evaluate import sanity_check
from dawntrain.models import PreActResNet
from synthetic import tiny_dataset


def test_untrained_resnet_scores_chance_with_batch_statistics():
    # With BN in eval mode (running stats still 0 and 1) this deep residual net's logits reach
    # ~100 and the loss ~200; with batch statistics it is near log(classes).
    torch.manual_seed(0)
    data = tiny_dataset(n=256, classes=4, size=32)
    config = resolve("tiny-imagenet-resnet", sets=["width=8"])
    normalizer = make_normalizer(config, data.train_images)
    model = PreActResNet(num_classes=4, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.as_tensor(data.train_images), torch.as_tensor(data.train_labels).long()
    message = sanity_check(model, x, y, normalizer, "fp32", 4, False)
    assert "WARNING" not in message
    loss = float(message.rsplit("got ", 1)[1])
    assert loss < 2 * math.log(4)
    # The check leaves the model as it found it: weights, running statistics, mode.
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
