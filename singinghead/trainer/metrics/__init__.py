"""The papers' 3D metrics (journal Table II, conference Table 2)."""
