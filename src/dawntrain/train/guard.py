"""The run's data, checked before any work (a shim over dawntrain.data.checked, kept while the
engine moves to calling that directly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dawntrain.data import ImageDataset, checked
from dawntrain.models import input_size

if TYPE_CHECKING:
    from dawntrain.config import Config


def expected_image_size(config: Config) -> int | None:
    """The side of the square images a run expects: config.image_size, else the model's."""
    return input_size(config)


def checked_dataset(config: Config, dataset=None) -> ImageDataset:
    """`dataset` as given (labels checked), else config.data loaded and checked: its images must
    have the model's input size unless config.resize, which resizes them."""
    what = f"the {config.preset} preset (model {config.model})"
    source = config.data if dataset is None else dataset
    return checked(source, side=expected_image_size(config), resize=config.resize, what=what)
