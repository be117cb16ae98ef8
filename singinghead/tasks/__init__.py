"""One module per processing step: plain functions that do the work, thin Prefect tasks."""
