"""One dynamic batcher in front of the model, shared by every route.

Requests queue up on the event loop. A collector task takes the oldest one,
adds the next ones while the batch has room (``max_batch_size`` images) and
waits at most ``batch_timeout_ms`` for more when the queue runs dry; then it
runs one model call in a dedicated thread, hands every request its rows and
starts the next batch. While the model is busy the queue fills, so under load
batches are full and nobody waits for the timer.

A request is never split across model versions: all of its images go through
the model object picked for the batch that holds it. A request with more images
than ``max_batch_size`` runs alone, in chunks, on one model object.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .errors import ApiError
from .metrics import Metrics
from .model import ServedModel

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: Sequence[bytes]
    version: int | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Prediction:
    model: ServedModel
    probabilities: np.ndarray  # float32 [n_images, K]


class Batcher:
    def __init__(
        self,
        get_model: Callable[[], ServedModel | None],
        max_batch_size: int,
        batch_timeout_ms: float,
        max_queue_images: int,
        metrics: Metrics | None = None,
    ):
        self._get_model = get_model
        self.max_batch_size = max(1, int(max_batch_size))
        self.timeout_s = max(0.0, batch_timeout_ms) / 1000.0
        self.max_queue_images = max_queue_images
        self._metrics = metrics
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_images = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serving-model")
        self._task = asyncio.create_task(self._run(), name="serving-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            req = self._queue.popleft()
            if not req.future.done():
                req.future.set_exception(ApiError(503, "server is shutting down"))
        self._queued_images = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- API ----------------------------------------------------------------
    async def predict(self, images: Sequence[bytes], version: int | None = None) -> Prediction:
        """Queue the images of one request; resolve with their rows."""
        if self._task is None or self._wakeup is None:
            raise ApiError(503, "server is not ready")
        if not images:
            raise ApiError(400, "no images")
        if self._queued_images + len(images) > self.max_queue_images:
            raise ApiError(503, "server is overloaded; retry later", {"Retry-After": "1"})
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(images, version, fut))
        self._queued_images += len(images)
        self._set_queue_gauge()
        self._wakeup.set()
        return await fut

    # -- internals ----------------------------------------------------------
    def _set_queue_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_images.set(self._queued_images)

    def _pop(self) -> _Request:
        req = self._queue.popleft()
        self._queued_images -= len(req.images)
        return req

    async def _collect(self) -> list[_Request]:
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._pop()]
        total = len(batch[0].images)
        deadline = time.perf_counter() + self.timeout_s
        while total < self.max_batch_size:
            if self._queue:
                if total + len(self._queue[0].images) > self.max_batch_size:
                    break
                req = self._pop()
                batch.append(req)
                total += len(req.images)
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self._set_queue_gauge()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [r for r in batch if not r.future.done()]  # cancelled: client went away
            if not batch:
                continue
            model = self._get_model()
            if model is None:
                for r in batch:
                    r.future.set_exception(ApiError(503, "no model version is loaded"))
                continue
            runnable = []
            for r in batch:
                if r.version is not None and r.version != model.version:
                    r.future.set_exception(
                        ApiError(404, f"version {r.version} of model '{model.name}' is no longer served "
                                      f"(serving {model.version})")
                    )
                else:
                    runnable.append(r)
            if not runnable:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._execute, model, runnable)
            except asyncio.CancelledError:  # stop() while a batch runs: nobody may wait forever
                for r in runnable:
                    if not r.future.done():
                        r.future.set_exception(ApiError(503, "server is shutting down"))
                raise
            except Exception:  # pragma: no cover - _execute catches everything it expects
                log.exception("batch failed")
                results = [ApiError(500, "internal error while running the model")] * len(runnable)
            for r, res in zip(runnable, results):
                if r.future.done():
                    continue
                if isinstance(res, BaseException):
                    r.future.set_exception(res)
                else:
                    r.future.set_result(Prediction(model, res))

    def _call(self, model: ServedModel, images: Sequence[bytes]) -> np.ndarray:
        """One model call per chunk of at most max_batch_size images."""
        m = self._metrics
        outs = []
        for i in range(0, len(images), self.max_batch_size):
            chunk = images[i:i + self.max_batch_size]
            t0 = time.perf_counter()
            outs.append(model.predict(chunk))
            if m is not None:
                m.inference.observe(time.perf_counter() - t0)
                m.batch_size.observe(len(chunk))
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _execute(self, model: ServedModel, batch: list[_Request]) -> list[np.ndarray | ApiError]:
        """Runs in the model thread. One call for the batch; on failure, find the culprit."""
        if self._metrics is not None:
            self._metrics.batch_requests.observe(len(batch))
        images = [img for r in batch for img in r.images]
        try:
            probs = self._call(model, images)
        except Exception as e:
            log.warning("model call on a batch of %d images failed (%s); retrying one request at a time",
                        len(images), type(e).__name__)
            return [self._isolate(model, r) for r in batch]
        out, start = [], 0
        for r in batch:
            out.append(probs[start:start + len(r.images)])
            start += len(r.images)
        return out

    def _isolate(self, model: ServedModel, req: _Request) -> np.ndarray | ApiError:
        try:
            return self._call(model, req.images)
        except Exception:
            pass
        rows = []
        for i, img in enumerate(req.images):
            try:
                rows.append(self._call(model, [img]))
            except Exception as e:
                if _is_input_error(e):
                    where = "image" if len(req.images) == 1 else f"image {i}"
                    return ApiError(422, f"the model could not decode {where}")
                log.error("model call failed: %s: %s", type(e).__name__, e)
                return ApiError(500, "internal error while running the model")
        return np.concatenate(rows, axis=0)


def _is_input_error(e: BaseException) -> bool:
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, tf.errors.InvalidArgumentError)
