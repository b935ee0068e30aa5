"""The one strategy factory (default | one_device | mirrored | multiworker | tpu | auto),
the precision `auto` picks, and
what a multi-worker run needs besides it: TF_CONFIG checks, who writes the run's files,
a cross-worker agreement check and the input sharding policy."""
from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from tfmicle.cli import UsageError
from tfmicle.config import CHOICES

log = logging.getLogger(__name__)

STRATEGIES = CHOICES["distribute.strategy"]  # the config owns the names


class StrategyError(UsageError, RuntimeError):
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
    - multiworker: MultiWorkerMirroredStrategy, cluster from TF_CONFIG (checked by
      tf_config_cluster: StrategyError when missing or malformed). Each worker's
      replicas are its GPUs, or its one CPU.
    - tpu: TPUStrategy through TPUClusterResolver(tpu) (name, grpc:// address or "" for
      the local / Cloud TPU VM). Raises StrategyError when no TPU is reachable.
    - auto: what the machine has: a TPU if one is reachable, else all local GPUs
      (mirrored when there are several, one_device for one), else the default strategy.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r} (one of: {', '.join(STRATEGIES)})")
    if name == "auto":
        name, strategy = auto_strategy(tpu)
        log.info("distribute.strategy auto: %s", name)
        return strategy if strategy is not None else make_strategy(name, tpu, num_cpu_devices)
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
        cluster, task = tf_config_cluster()
        log.info("MultiWorkerMirroredStrategy: %s %d of %s", task[0], task[1],
                 {k: len(v) for k, v in cluster.items()})
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # resolver failures vary: ValueError, URLError, OpError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StrategyError(f"no TPU found for --tpu={tpu or '(local)'}: {first}") from None
    return tf.distribute.TPUStrategy(resolver)


# --------------------------------------------------------------------------- multi-worker

WORKER_TASKS = ("chief", "worker")  # the task types that train under MultiWorkerMirrored



def auto_strategy(tpu: str = "") -> tuple[str, tf.distribute.Strategy | None]:
    """(name, strategy or None) of what `auto` picks: TPU when a resolver reaches one (the
    strategy is returned, already connected), else mirrored for several GPUs, one_device
    for one, default otherwise."""
    try:
        return "tpu", make_strategy("tpu", tpu)
    except StrategyError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return ("mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"), None


def auto_precision(strategy: tf.distribute.Strategy) -> str:
    """mixed_bfloat16 where bfloat16 is fast, float32 elsewhere: TPUs; NVIDIA GPUs of
    compute capability 8.0 or newer (Ampere, Hopper); CPUs with AVX512_BF16 or AMX
    (measured here: mixed_bfloat16 1.3x faster than float32 on an AVX512_BF16 EPYC)."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "mixed_bfloat16"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        caps = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0))
                for g in gpus]
        return "mixed_bfloat16" if all(tuple(c) >= (8, 0) for c in caps) else "float32"
    return "mixed_bfloat16" if cpu_has_fast_bf16() else "float32"


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU's flags name AVX512_BF16 or AMX-BF16 (Linux; False elsewhere)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

def tf_config_cluster(environ: dict | None = None) -> tuple[dict, tuple[str, int]]:
    """Checks the TF_CONFIG of a multi-worker run and returns (cluster {type: [host:port,
    ...]}, (task type, task index)). MultiWorkerMirroredStrategy itself silently trains
    on one worker without TF_CONFIG, and fails deep inside gRPC on a bad one: this turns
    both into one StrategyError line.

    TF_CONFIG='{"cluster": {"worker": ["host1:port", "host2:port"]},
                "task": {"type": "worker", "index": 0}}'
    (an optional "chief": ["host0:port"] task is the chief; without it worker 0 is)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    hint = ("TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:port\", \"host2:port\"]}, "
            "\"task\": {\"type\": \"worker\", \"index\": 0}}'")
    if not raw:
        raise StrategyError(f"strategy multiworker needs TF_CONFIG in the environment of "
                            f"every worker, e.g. {hint}")
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not JSON ({e})") from None
    cluster = conf.get("cluster") if isinstance(conf, dict) else None
    if not isinstance(cluster, dict) or not any(cluster.get(t) for t in WORKER_TASKS):
        raise StrategyError(f"TF_CONFIG has no cluster with workers, e.g. {hint}")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise StrategyError(f"TF_CONFIG cluster.{kind} must be a list of "
                                f"\"host:port\" strings, got {addresses!r}")
    if len(cluster.get("chief") or []) > 1:
        raise StrategyError("TF_CONFIG cluster.chief has more than one address")
    task = conf.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise StrategyError("TF_CONFIG has no task {\"type\": ..., \"index\": ...} "
                            "(which of the cluster's tasks this process is)")
    kind, index = task["type"], task["index"]
    if kind not in WORKER_TASKS:
        raise StrategyError(f"TF_CONFIG task.type {kind!r}: multiworker trains on "
                            f"{' / '.join(WORKER_TASKS)} tasks")
    if not isinstance(index, int) or isinstance(index, bool) or \
            not 0 <= index < len(cluster.get(kind) or []):
        raise StrategyError(f"TF_CONFIG task.index {index!r} is not one of the "
                            f"{len(cluster.get(kind) or [])} {kind} addresses")
    return cluster, (kind, index)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (checkpoints, logs, config): always
    on one machine; under MultiWorkerMirroredStrategy the chief task, or worker 0 when
    the cluster has no chief."""
    return bool(strategy.extended.should_checkpoint)


def worker_name(strategy: tf.distribute.Strategy) -> str:
    """"chief", "worker0", ... for logs and temporary folder names ("" on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return ""
    return f"{resolver.task_type}{resolver.task_id if resolver.task_type != 'chief' else ''}"


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()  # no public equivalent


def gather_from_workers(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """Every replica's copy of a per-process integer, in replica order (a collective:
    every worker must call it at the same point). One machine: [value]."""
    if not is_multi_worker(strategy):
        return [int(value)]
    per = strategy.run(lambda: tf.constant([value], tf.int64))
    return [int(v) for v in strategy.gather(per, axis=0).numpy()]


def chief_decides(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """The chief's value of a per-process decision, on every worker (a collective:
    every worker must call it at the same point). One machine: flag."""
    if not is_multi_worker(strategy):
        return bool(flag)
    # One gather: 2 marks the chief's entry, 1 its flag.
    votes = gather_from_workers(strategy, 2 * int(is_chief(strategy)) + int(bool(flag)))
    return bool(next(v for v in votes if v >= 2) % 2)


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Auto-shard policy DATA: every worker builds the same global batches (the
    pipelines are seeded and stateless) and feeds its replicas their slices of each,
    exactly as MirroredStrategy splits a batch over local replicas. So a multi-worker run
    sees the same batches, negatives and batch-norm statistics as one machine with as
    many replicas. FILE sharding would give each worker other cases and other batch
    boundaries (and needs at least one shard per worker). The price: each worker reads
    and augments the whole global batch; see README "Scaling out"."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
