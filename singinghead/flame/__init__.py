"""The FLAME head model: safe loading, the ICT head as an open stand-in, a torch layer."""
