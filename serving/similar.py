"""Similar cases: the case index (tfmicle.caseindex) of the served model version, and
the search one request runs.

Where an index is found, for model version V (its folder ``MODELS/<name>/V``):

- no ``--similar-index``: ``MODELS/<name>/V/similar/``, an index inside the version
  folder (built for V; published with it or added later);
- ``--similar-index DIR`` where DIR holds ``index.json``: that one index, used for the
  version whose fingerprint it carries;
- ``--similar-index DIR`` otherwise: ``DIR/V/``, one index per version outside the
  model repository.

Whichever it is, an index is used only with the model whose fingerprint it carries
(``caseindex.check_matches``): when the server moves to V+1 it uses V+1's index or
none, never V's. An index is loaded when its version is (before the swap), and looked
at again on every poll: one built later, rebuilt, or finished copying is picked up;
one refused stays refused until its marker changes. Its state (loaded / none /
refused, with the reason) is in the model status; the model serves /classify either way.
Map: docs/architecture.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tfmicle import fileio
from tfmicle.caseindex import ann, store
from tfmicle.caseindex.search import cosine_top_k
from tfmicle.model_format import CASE_INDEX_DIR, EMBEDDING_OUTPUT, PROBABILITIES_OUTPUT

from .errors import ApiError
from .model import ServedModel

log = logging.getLogger(__name__)

FIELDS = ("case_id", "label", "similarity", "metadata")  # --similar-fields; "metadata.COL" picks one column
MAX_K = 100
LOADED, NONE, REFUSED = "loaded", "none", "refused"


def check_fields(text: str) -> tuple[str, ...]:
    """--similar-fields "label,similarity" -> ("label", "similarity"); ValueError naming
    the choices for anything else."""
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in fields if f not in FIELDS and not (f.startswith("metadata.") and len(f) > 9)]
    if not fields or bad:
        raise ValueError(f"--similar-fields {text!r}: a comma list of {', '.join(FIELDS)} or metadata.COLUMN")
    return fields


@dataclass(frozen=True)
class IndexState:
    """The index of one model version: loaded (with the index), none (no index folder),
    or refused (the reason: another model's, incomplete, unreadable)."""

    version: int
    state: str
    reason: str = ""
    index: store.CaseIndex | None = None
    stamp: tuple[int, int] | None = None  # the marker's (size, mtime) when looked at
    retry: bool = False  # incomplete (a copy in progress): look again on the next poll
    ivf: ann.IvfIndex | None = None  # approximate search, for a large index when faiss is installed

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query [1, D] -> (rows [1, <= k], similarities [1, <= k]): IVF when built, else exact."""
        assert self.index is not None
        if self.ivf is not None:
            return self.ivf.search(query, k)
        return cosine_top_k(self.index.embeddings, query, k)

    def status(self) -> dict:
        out: dict[str, Any] = {"state": self.state, "reason": self.reason}
        if self.index is not None:
            out.update(cases=self.index.count, dim=self.index.dim, dtype=str(self.index.embeddings.dtype),
                       fingerprint=store.short(self.index.fingerprint), search="ivf" if self.ivf else "exact")
        return out


class SimilarIndexes:
    """The index of each loaded model version (in practice the served one, and the next
    one while it loads). Written by the repository's poller thread, read by requests:
    one dict entry replaced at a time."""

    def __init__(self, base_path: str, index_path: str | None = None, ann_min_cases: int | None = None):
        self.base_path = base_path
        self.index_path = index_path
        # from this many cases on, IVF when faiss is installed
        self.ann_min_cases = ann.ANN_MIN_CASES if ann_min_cases is None else ann_min_cases
        self._states: dict[int, IndexState] = {}
        self._fingerprints: dict[int, str] = {}

    def folder_for(self, version: int) -> str:
        if self.index_path is None:
            return fileio.join(self.base_path, str(version), CASE_INDEX_DIR)
        if fileio.isfile(fileio.join(self.index_path, store.INDEX_FILE)):
            return self.index_path
        return fileio.join(self.index_path, str(version))

    def get(self, version: int) -> IndexState | None:
        return self._states.get(version)

    def prepare(self, version: int) -> IndexState:
        """Reads and checks the index of a version that has just loaded (the poller's
        thread, before the swap)."""
        folder = self.folder_for(version)
        stamp = store.marker_stamp(folder)
        version_dir = fileio.join(self.base_path, str(version))
        try:
            index = store.read_index(folder)
            fp = self._fingerprints.get(version)
            if fp is None:
                fp = self._fingerprints[version] = store.model_fingerprint(version_dir)
            store.check_matches(index, version_dir, version, fingerprint=fp)
        except store.IndexMissingError:
            st = IndexState(version, NONE, self._shown(f"no case index at {folder}", version), stamp=stamp)
        except store.CaseIndexError as e:
            st = IndexState(version, REFUSED, self._shown(str(e), version), stamp=stamp,
                            retry=isinstance(e, store.IndexIncompleteError))
            log.error("case index for version %d refused: %s", version, e)
        else:
            ivf = None
            if index.count >= self.ann_min_cases:
                if ann.available():
                    ivf = ann.IvfIndex(index.embeddings)
                else:
                    log.warning("case index for version %d has %d cases: exact search may be slow; install "
                                "faiss-cpu (tfmicle[similar-ann]) for approximate search", version, index.count)
            st = IndexState(version, LOADED, "", index, stamp, ivf=ivf)
            log.info("case index for version %d: %d cases, D=%d, %s search, from %s", version, index.count,
                     index.dim, "IVF" if ivf else "exact", folder)
        self._states[version] = st
        return st

    def _shown(self, message: str, version: int) -> str:
        """A reason for the status and 409s: names the version, not the server's folders
        (as the repository's status does)."""
        message = message.replace(fileio.join(self.base_path, str(version)), f"version {version}")
        return message if self.index_path is None else message.replace(self.index_path, "--similar-index")

    def on_load(self, version: int, ok: bool) -> None:
        if ok:
            self.prepare(version)

    def sync(self, current: int | None) -> None:
        """After each look at the repository: forget versions no longer served, and read
        the served version's index again when its marker changed (built, rebuilt) or it
        was not complete."""
        for v in [v for v in self._states if v != current]:
            self._states.pop(v, None)
            self._fingerprints.pop(v, None)
        if current is None:
            return
        st = self._states.get(current)
        if st is None or st.retry or st.stamp != store.marker_stamp(self.folder_for(current)):
            self.prepare(current)


# --------------------------------------------------------------------------- a request

def run_outputs(model: ServedModel, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded images -> (probabilities [n, K], embedding [n, D]) from ONE call of the
    served signature (blocking). ServedModel.predict keeps only the probabilities, so the
    signature is called here; 409 when the model has no embedding output."""
    import tensorflow as tf

    if EMBEDDING_OUTPUT not in model.outputs:
        raise ApiError(409, f"version {model.version} of '{model.name}' has no '{EMBEDDING_OUTPUT}' output: "
                            "similar cases need a model exported with one")
    try:
        out = model.predict_outputs(images)
    except tf.errors.InvalidArgumentError:
        raise ApiError(422, "the model could not decode an image") from None
    return (np.asarray(out[PROBABILITIES_OUTPUT], np.float32),
            np.asarray(out[EMBEDDING_OUTPUT], np.float32))


def nearest(st: IndexState, embeddings: np.ndarray, k: int, fields: Sequence[str]) -> list[dict]:
    """The images of one case [M, D] -> the k nearest reference cases, as the
    --similar-fields say. The images are one query: the mean of their L2-normalised
    embeddings (store.case_embeddings), as the index stores its cases."""
    _, query = store.case_embeddings(embeddings, ["query"] * len(embeddings))
    if not np.any(query):
        raise ApiError(422, "the model's embedding of this case is all zeros: it has no direction to compare")
    index = st.index
    assert index is not None
    rows, sims = st.search(query, k)
    out = []
    for rank, (row, sim) in enumerate(zip(rows[0].tolist(), sims[0].tolist()), 1):
        item: dict[str, Any] = {"rank": rank}
        for f in fields:
            if f == "case_id":
                item["case_id"] = index.case_ids[row]
            elif f == "label":
                item["label"] = index.labels[row]
            elif f == "similarity":
                item["similarity"] = round(float(sim), 6)
            elif f == "metadata":
                item["metadata"] = {c: vs[row] for c, vs in index.metadata.items()}
            else:
                col = f[len("metadata."):]
                if col in index.metadata:
                    item.setdefault("metadata", {})[col] = index.metadata[col][row]
        out.append(item)
    return out


def require_index(indexes: SimilarIndexes, model: ServedModel) -> IndexState:
    """The served version's loaded index, or a 409 saying why there is none."""
    st = indexes.get(model.version)
    if st is None or st.index is None:
        why = st.reason if st is not None else "not looked at yet"
        raise ApiError(409, f"no case index is loaded for version {model.version} of '{model.name}': {why}")
    return st


def similar_block(st: IndexState, embeddings: np.ndarray, k: int, fields: Sequence[str]) -> dict:
    """The ``similar`` part of an answer, from the index taken when the request began (a
    reload meanwhile does not mix one version's embedding with another's index)."""
    assert st.index is not None
    cases = nearest(st, embeddings, k, fields)
    return {"k": len(cases), "index_cases": st.index.count, "num_images": int(embeddings.shape[0]),
            "cases": cases}


def describe_for_status(indexes: SimilarIndexes | None, version: int) -> dict | None:
    """The index entry of the model status; None (left out: TF Serving's own shape) when
    no --similar-index was given and the version has no index folder."""
    if indexes is None:
        return None
    st = indexes.get(version)
    if st is None or (st.state == NONE and indexes.index_path is None):
        return None
    return st.status()
