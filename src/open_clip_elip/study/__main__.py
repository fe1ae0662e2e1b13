"""``python -m open_clip_elip.study``."""
import sys

from .cli import main

sys.exit(main())
