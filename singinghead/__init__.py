"""singinghead: capture sessions → the SingingHead 4D singing-head dataset → UniSinger."""

__version__ = "0.1.0"
