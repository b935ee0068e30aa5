"""Runs a plan on this machine: worker processes decode/validate images, this
process encodes the Examples and writes the shards one at a time.

Images and the output may be URLs (tfmicle.fileio): each worker reads its images
through tf.io.gfile itself. ``ram://`` is the exception: TensorFlow's in-memory
filesystem exists once per process, so a worker would not see it; with any ``ram://``
image the cases are read in this process (one worker)."""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

from data_prep.cases import CaseResult, CaseSpec, Skip, process_case, process_chunk
from data_prep.errors import StrictError
from data_prep.plan import Plan, WorkItem
from tfmicle import cli, fileio
from tfmicle.imagefiles import ImageOptions

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]     # (images done, images total)


@dataclass
class CaseSummary:
    """What the summary and the subsets need to know of a written case."""
    case_id: str
    patient_id: str
    split: str
    shard: str                  # shard file name
    image_ids: list[str]
    label_class: int
    label_multi: list[float] | None


@dataclass
class RunResult:
    cases: list[CaseSummary]
    skipped: list[Skip]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _watch_parent(parent: int) -> None:
    """Worker initializer: the worker exits when the parent dies, even killed with
    SIGKILL (which leaves the pool no chance to stop its workers). Linux: the kernel
    sends SIGKILL at the parent's death (PR_SET_PDEATHSIG); elsewhere, and as a
    fallback, a thread polls the parent pid."""
    import signal
    import threading
    import time

    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)               # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):               # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:                      # died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _start_worker(parent: int) -> None:
    """Worker initializer: TensorFlow's import chatter kept off the console as in the
    parent (tfmicle.cli.quiet_tensorflow), and _watch_parent."""
    cli.quiet_tensorflow()
    _watch_parent(parent)


def _results(work: list[WorkItem], options: ImageOptions, workers: int,
             chunk: int = 8) -> Iterator[CaseResult]:
    """CaseResults in work order; at most a bounded number of chunks in flight."""
    if workers <= 1:
        for item in work:
            yield process_case(item.case, options)
        return
    chunks = [[(i, work[i].case) for i in range(s, min(s + chunk, len(work)))]
              for s in range(0, len(work), chunk)]
    ctx = multiprocessing.get_context("spawn")      # never fork a process that runs TF
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                             initargs=(os.getpid(),)) as pool:
        pending: collections.deque[Future] = collections.deque()
        it = iter(chunks)
        try:
            for c in it:
                pending.append(pool.submit(process_chunk, c, options))
                if len(pending) >= 4 * workers:
                    break
            while pending:
                done = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(process_chunk, nxt, options))
                for _, res in done:
                    yield res
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def run_local(plan: Plan, staging: str, options: ImageOptions, workers: int = 0,
              strict: bool = False, progress: Progress | None = None) -> RunResult:
    from tfmicle.data.records import encode_case, shard_name
    from data_prep.writer import ShardWriter

    workers = workers or default_workers()
    work = plan.work()
    if workers > 1 and any(fileio.is_process_local(r.path) for w in work for r in w.case.images):
        log.info("images on ram:// (one per process): reading them in this process")
        workers = 1
    total = plan.num_images
    log.info("converting %d cases (%d images) with %d worker process(es)", len(work), total,
             workers)
    cases: list[CaseSummary] = []
    skipped: list[Skip] = []
    writer: ShardWriter | None = None
    current = None
    done = 0
    results = _results(work, options, workers)
    try:
        for item, res in zip(work, results):
            key = (item.split, item.shard)
            if key != current:
                if writer:
                    writer.close()
                n = plan.splits[item.split].num_shards
                name = shard_name(item.split, item.shard, n)
                writer = ShardWriter(fileio.join(staging, name))
                current = key
            if res.skipped:
                if strict:
                    raise StrictError(res.skipped[0].strict_message())
                skipped.extend(res.skipped)
            c: CaseSpec = item.case
            if res.images:
                ex = encode_case(c.case_id, res.images, res.image_ids, c.patient_id,
                                 res.views or None, c.label_class, c.label_multi,
                                 c.meta_keys, res.meta, res.near_pairs)
                writer.write(ex.SerializeToString(deterministic=True))
                cases.append(CaseSummary(c.case_id, c.patient_id, item.split,
                                         os.path.basename(writer.path), res.image_ids,
                                         c.label_class, c.label_multi))
            done += len(c.images)
            if progress:
                progress(done, total)
        if writer:
            writer.close()
            writer = None
    finally:
        results.close()
        if writer:
            writer.abort()
    return RunResult(cases, skipped)
