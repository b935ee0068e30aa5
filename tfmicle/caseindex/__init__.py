"""Similar-case retrieval: the index folder (``store``: format, publish rule, model
fingerprint, case aggregation) and exact cosine search (``search``). numpy only, no
TensorFlow at import (TensorFlow only through ``tfmicle.fileio`` for URLs), so serving
and scoring share it. Map: docs/architecture.md."""
