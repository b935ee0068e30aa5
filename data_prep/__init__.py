"""data_prep: raw medical image datasets -> case-grouped TFRecords (schema v1, see
docs/architecture.md and tfmicle/data/records.py).

``python -m data_prep --help``; the library entry point is :func:`data_prep.convert.convert`.
This package's top level imports nothing heavy: worker processes import it.
"""
FORMATS = ("csv", "folders", "ham10000", "isic2019", "isic2020", "chexpert")
