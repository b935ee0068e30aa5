"""Start `python -m serving` as a real process, and make test images.

Used by the tests (a real uvicorn process on 127.0.0.1, port 0 = a free one)
and by ``bench/serving.py``.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on (http://[^\s]+) ")


def encode(pixels: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    """HxWx3 uint8 -> PNG/JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8), "RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uniform noise: the worst case for JPEG/PNG size and decoding time."""
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_pixels(rng: np.random.Generator, height: int, width: int, cells: int = 6, noise: float = 6.0) -> np.ndarray:
    """Photo-like: a random colour field, bicubically smoothed, plus mild sensor noise."""
    from PIL import Image

    grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class ServerProcess:
    """``with ServerProcess(base, "--api-key", "k") as s: httpx.get(s.url + "/v2/health/ready")``."""

    def __init__(self, model_base_path: str | os.PathLike, *args: str, env: dict[str, str] | None = None,
                 startup_timeout: float = 180.0, api_key: str | None = None):
        self.cmd = [sys.executable, "-m", "serving", "--model-base-path", str(model_base_path), "--host",
                    "127.0.0.1", "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.startup_timeout = startup_timeout
        self.api_key = api_key
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile("w+b", prefix="serving-", suffix=".log", delete=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> "ServerProcess":
        import httpx

        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=str(REPO_ROOT))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if not self.url:
                m = _LISTENING.search(self.log_text())
                if m:
                    self.url = m.group(1)
            if self.url:
                try:
                    if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {self.startup_timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
