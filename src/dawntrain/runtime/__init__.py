"""Where and how the process computes: device and precision, torch.distributed, the CPU allocator."""
