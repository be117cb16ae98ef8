"""Pure feature functions shared by the processing steps and the trainer (a base layer)."""
