"""Training: run config, data + importers, thought-video targets, losses, checkpoints, and
the one loop every method shares (``stormvl.training.loop.train``)."""
