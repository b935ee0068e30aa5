"""`python -m tfmicle.score`: see tfmicle.score.cli."""
import sys

from tfmicle.score.cli import main

sys.exit(main())
