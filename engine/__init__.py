"""Training/evaluation plumbing shared by train.py and val.py (config checks, runner, hooks, dist)."""
import warnings

# mmcv 1.7 warns at every import about its 2.0 renaming; it is not actionable for users here.
warnings.filterwarnings('ignore', message='On January 1, 2023, MMCV will release v2.0.0')
