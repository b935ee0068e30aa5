"""`python -m tfmicle.train`: see tfmicle.train.cli."""
import sys

from tfmicle.train.cli import main

sys.exit(main())
