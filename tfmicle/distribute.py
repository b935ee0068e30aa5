"""The one strategy factory: default | one_device | mirrored | multiworker | tpu."""
from __future__ import annotations

import logging

import tensorflow as tf

from tfmicle.config import CHOICES

log = logging.getLogger(__name__)

STRATEGIES = CHOICES["distribute.strategy"]  # the config owns the names


class StrategyError(RuntimeError):
    """A strategy cannot be created on this machine (user-facing, one line)."""


def configure_cpu_devices(n: int) -> list:
    """Splits the physical CPU into n logical devices so MirroredStrategy can run n
    replicas on a CPU-only machine. Must run before TensorFlow initialises its runtime
    (before the first op); returns the logical CPU devices."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if n > 1 and (current is None or len(current) != n):
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError as e:
            raise StrategyError(f"cannot split the CPU into {n} devices after TensorFlow "
                                f"started ({e})") from None
    return tf.config.list_logical_devices("CPU")


def make_strategy(name: str = "default", tpu: str = "", num_cpu_devices: int = 0
                  ) -> tf.distribute.Strategy:
    """Returns the tf.distribute strategy called name.

    - default: tf's default strategy (one device, no distribution).
    - one_device: the first GPU if any, else the CPU.
    - mirrored: all local GPUs; on a machine without GPUs, num_cpu_devices (>= 2) logical
      CPUs (or the single CPU when 0).
    - multiworker: MultiWorkerMirroredStrategy (cluster from TF_CONFIG).
    - tpu: TPUStrategy through TPUClusterResolver(tpu) (name, grpc:// address or "" for
      the local / Cloud TPU VM). Raises StrategyError when no TPU is reachable.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r} (one of: {', '.join(STRATEGIES)})")
    if name == "default":
        return tf.distribute.get_strategy()
    # Physical, not logical: listing logical devices would start the runtime and make
    # splitting the CPU into replicas impossible.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = configure_cpu_devices(num_cpu_devices) if num_cpu_devices > 1 else \
            tf.config.list_logical_devices("CPU")
        devices = [d.name for d in cpus[:max(num_cpu_devices, 1)]]
        log.info("MirroredStrategy over CPU devices %s", devices)
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # resolver failures vary: ValueError, URLError, OpError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StrategyError(f"no TPU found for --tpu={tpu or '(local)'}: {first}") from None
    return tf.distribute.TPUStrategy(resolver)
