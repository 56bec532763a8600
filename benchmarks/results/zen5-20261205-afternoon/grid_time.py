"""The report's image grid before and after fe9309b, timed in one process: matplotlib's
constrained layout against cells of fixed size (analysis/plots.py figure_grid), each drawn to PNG
five times on random 32x32 images with two-line titles.

    python benchmarks/results/zen5-20261205-afternoon/grid_time.py
"""

import time

import numpy as np
from matplotlib.figure import Figure

from dawntrain.analysis.plots import figure_grid, png_bytes


def constrained(images, titles, colors=None, columns=8):
    """figure_grid as it was before fe9309b."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(1.6 * columns, 1.75 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=8, color=colors[i] if colors else "black")
    return fig


def main() -> None:
    images = np.random.default_rng(0).integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    titles = [
        f"airplane 0.9{i}\n(true: cat)" if i % 3 == 0 else f"dog 0.{i:02d}" for i in range(32)
    ]
    colors = ["tab:red" if i % 3 == 0 else "tab:green" for i in range(32)]
    for n in (32, 16):  # the report's predictions grid, and 16 mistakes
        for name, draw in (("constrained layout", constrained), ("fixed cells", figure_grid)):
            times = []
            for _ in range(5):
                start = time.perf_counter()
                png_bytes(draw(images[:n], titles[:n], colors[:n]))
                times.append(time.perf_counter() - start)
            print(f"{n} images, {name}: median {sorted(times)[2]:.3f} s (min {min(times):.3f})")


if __name__ == "__main__":
    main()
