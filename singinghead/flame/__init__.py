"""The FLAME head model: safe loading, a procedural stand-in, a torch layer."""
