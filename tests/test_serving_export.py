"""The server in front of a real `tfmicle.export` SavedModel (a tiny fine-tuned ResNet),
answers checked against the SavedModel called directly."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from serving_harness import ServerProcess, encode, random_pixels

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow


def test_server_serves_the_tfmicle_export(exported_model):
    import tensorflow as tf

    out = exported_model
    version_dir = Path(out["path"])
    rng = np.random.default_rng(5)
    images = [encode(random_pixels(rng, 40, 52)), encode(random_pixels(rng, 64, 64), "JPEG"),
              encode(random_pixels(rng, 33, 47))]
    direct = tf.saved_model.load(str(version_dir)).signatures["serving_default"](
        images=tf.constant(images))["probabilities"].numpy()
    labels = (version_dir / "assets" / "labels.txt").read_text().split()
    # export published it: the marker lists every other file of the folder at its size,
    # but the model card (the deployer completes it in place)
    from tfmicle.model_format import MODEL_CARD_JSON, MODEL_CARD_MD, PUBLISHED_FILE, unpublished_reason

    listed = json.loads((version_dir / PUBLISHED_FILE).read_text())["files"]
    on_disk = {p.relative_to(version_dir).as_posix(): p.stat().st_size for p in version_dir.rglob("*") if p.is_file()}
    assert {MODEL_CARD_JSON, MODEL_CARD_MD} <= set(on_disk)
    assert listed == {k: v for k, v in on_disk.items()
                      if k not in (PUBLISHED_FILE, MODEL_CARD_JSON, MODEL_CARD_MD)}
    assert {"saved_model.pb", "assets/labels.txt", "assets/metadata.json"} <= set(listed)
    assert any(k.startswith("variables/") for k in listed) and unpublished_reason(version_dir) is None

    with ServerProcess(version_dir.parent, "--poll-seconds", "0") as server, \
            httpx.Client(base_url=server.url, timeout=60) as c:
        name = version_dir.parent.name
        r = c.post("/classify", files=[("files", (f"{i}.img", d)) for i, d in enumerate(images)],
                   params={"top_k": len(labels)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == int(version_dir.name)
        for row, im in zip(direct, body["images"]):
            got = {x["label"]: x["score"] for x in im["top"]}
            np.testing.assert_allclose([got[x] for x in labels], row, atol=1e-5)
        case = {x["label"]: x["score"] for x in body["case"]["top"]}
        np.testing.assert_allclose([case[x] for x in labels], direct.mean(axis=0), atol=1e-5)

        b64 = [base64.b64encode(d).decode() for d in images]
        r = c.post(f"/v1/models/{name}:predict", json={"instances": [{"b64": x} for x in b64]})
        np.testing.assert_allclose(r.json()["predictions"], direct, atol=1e-5)
        r = c.post(f"/v2/models/{name}/infer",
                   json={"inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": b64}]})
        np.testing.assert_allclose(np.reshape(r.json()["outputs"][0]["data"], (3, -1)), direct, atol=1e-5)
        meta = c.get(f"/v1/models/{name}/metadata").json()
        outputs = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
        assert list(outputs) == ["probabilities"]  # the embedding output is not served
