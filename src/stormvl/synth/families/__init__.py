"""One module per task family; the registry (``stormvl.synth.registry``) lists them in order."""
