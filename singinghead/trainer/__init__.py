"""UniSinger trainer: reads release shards only (imports schemas, storage, flame)."""
