"""Use a trained checkpoint: load its model, evaluate it, predict image files, export it."""
