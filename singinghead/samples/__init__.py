"""The embedded sample session: small, complete, with ground truth known by construction."""
