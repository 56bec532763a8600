"""Looking inside models and runs: FLOPs, layer tables, curvature, plots, reports.

`dawntrain.analysis.flops(model, input_shape)` is the forward FLOPs of one image (multiply-add =
2), counted analytically from the layers' shapes; `flop_count` has the per-layer breakdown.
"""

from dawntrain.analysis.flop_count import flops, flops_breakdown, training_flops_per_image

__all__ = ["flops", "flops_breakdown", "training_flops_per_image"]
