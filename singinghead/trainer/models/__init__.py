"""UniSinger networks."""
