"""The engine: builds a run from a config, a dataset and a device, takes its step, evaluates it."""
