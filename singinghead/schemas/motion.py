"""The 59-d per-frame FLAME motion layout of the released SingingHead data (SPEC §2.8)."""

FPS = 30
MOTION_DIM = 59
SHAPE_DIM = 100
EXPRESSION = slice(0, 50)
GLOBAL_ORIENT = slice(50, 53)
NECK = slice(53, 56)
JAW = slice(56, 59)
HEAD_POSE = slice(50, 56)  # global + neck, the 6-d pose used by PPE
