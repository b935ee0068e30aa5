"""Data: the record schema (records), augmentations (augment) and tf.data pipelines (pipeline)."""
