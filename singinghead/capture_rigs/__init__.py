"""One adapter per capture device: raw files → typed streams. No processing."""
