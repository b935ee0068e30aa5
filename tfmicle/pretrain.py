"""Old import path (experiments/ use it): the code is tfmicle.train.pretrain; see
docs/architecture.md. A shim, to be removed once nothing imports it."""
from tfmicle.train.pretrain import *  # noqa: F401,F403
from tfmicle.train.pretrain import __all__  # noqa: F401
