"""fp32 against bf16 on this CPU: a 2048x2048 matmul and a 64->64 3x3 convolution on 256 images of
32x32 (channels_last) under bf16 autocast, 2 threads. On a CPU without native bf16 (Zen 3, AVX2
only) the bf16 paths are emulated; this is why dawntrain's `--precision auto` picks fp32 there and
why the reference airbench94_muon runs there with BF16=0.

    python bf16_emulation.py
"""

import time

import torch

from dawntrain.bench.throughput import matmul_peak_gflops


def main() -> None:
    torch.set_num_threads(2)
    for dtype in (torch.float32, torch.bfloat16):
        gflops = matmul_peak_gflops(dtype, torch.device("cpu"), n=2048)
        print(f"matmul 2048^3 {str(dtype):15} {gflops:8.1f} GFLOP/s (best of 3)")
    x = torch.randn(256, 64, 32, 32).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            conv(x)
            t = time.perf_counter()
            for _ in range(3):
                conv(x)
        name = "bf16 autocast" if bf16 else "fp32"
        print(f"conv 3x3 64->64, 256x32x32 {name:13} {(time.perf_counter() - t) / 3 * 1e3:8.0f} ms")


if __name__ == "__main__":
    main()
