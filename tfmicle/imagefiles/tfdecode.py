"""The TensorFlow decode check: does the decoder training and the exported model use
read these bytes? TensorFlow is imported on the first check, so the rest of the
package stays importable without it (data_prep's workers, serving's request threads)."""
from __future__ import annotations

import os
import re
import sys

_tf = None


def tf_error_message(e: BaseException, clean: bool = False) -> str:
    """An op error as one line of at most 200 characters. ``clean`` also drops the
    ``{{function_node ...}}`` prefix and ``[Op:...]`` suffix eager errors carry (score
    shows these; data_prep's skipped.csv has always kept the raw first line)."""
    msg = str(getattr(e, "message", e) if not clean else e).strip().splitlines()
    msg = msg[0] if msg else type(e).__name__
    if clean:
        msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
        msg = re.sub(r"\s*\[Op:\w+\]\s*$", "", msg)
    return msg[:200]


def decode_error(data: bytes, full: bool = False, clean: bool = False) -> str | None:
    """None when TensorFlow's image decoder (the one training uses) reads ``data``;
    otherwise its error's first line (``tf_error_message``). JPEGs are checked at 1/8
    scale unless ``full``: libjpeg entropy-decodes the whole stream at every scale, so
    the verdict is the same."""
    tf = import_tf()
    try:
        if data[:3] == b"\xff\xd8\xff" and not full:
            tf.io.decode_jpeg(data, ratio=8)
        else:
            tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        return tf_error_message(e, clean)
    return None


def import_tf():
    """TensorFlow, imported once per process; in a worker process (TF not imported yet)
    with its console logging off and one thread (the workers are the parallelism)."""
    global _tf
    if _tf is None:
        if "tensorflow" not in sys.modules:
            # a worker process: its decode failures are reported in skipped.csv, so
            # TensorFlow's own error lines for them would only be noise on the console
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow as tf
        try:                            # one thread per worker: the workers are the parallelism
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:            # already initialised (e.g. in the main process)
            pass
        _tf = tf
    return _tf
