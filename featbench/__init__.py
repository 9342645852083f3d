"""featbench: facial action unit recognition by transfer learning.

Pretrained CNNs are run over aligned faces and their upper / middle / lower regions, their
fc-layer codes are stored in HDF5, per-AU classifiers are trained on them and combined by
majority vote. See README.md for the command line and DESIGN.md for the architecture.

Importing this package is cheap: torch, timm and dlib are imported only by the functions
that need them.
"""

import os as _os

__version__ = "0.1.0"

# OpenCV prints its own "[ WARN:0@...]" lines (a video it cannot open, a codec it lacks) before
# featbench's one-line error, and its FFmpeg backend FFmpeg's ("moov atom not found", "overread
# 8"); featbench reports every such failure itself (quiet = -8). Set before any ``import cv2``;
# a user's own setting wins.
_os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
