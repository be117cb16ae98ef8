"""The only code that reads or writes artifact bytes: fsspec URLs, atomic writes, checksums,
the catalog of completed steps, and model-asset resolution."""
