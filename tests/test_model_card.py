"""The model card: what export writes (counts per split and class as dataset.json has
them, the best checkpoint's validation metric, the pretraining run's method and steps,
"unknown" for subgroups without metadata), that it stays out of the publish marker, what
score --model-card adds (metrics.json's held-out numbers), and the serving route."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from tfmicle import model_format as mf
from tfmicle.model_card.build import TO_COMPLETE, build_card
from tfmicle.model_card.markdown import render
from tfmicle.model_card.scoring import add_scoring

KEY = "card-key-1"


def _card(version_dir) -> dict:
    with open(os.path.join(version_dir, mf.MODEL_CARD_JSON)) as f:
        return json.load(f)


def _perf(card: dict, type_: str, slice_word: str) -> list[dict]:
    return [m for m in card["quantitative_analysis"]["performance_metrics"]
            if m["type"] == type_ and slice_word in m["slice"]]


# --------------------------------------------------------------------------- export

@pytest.mark.slow
def test_export_card_matches_dataset_best_state_and_pretraining_config(exported_model):
    vdir, run = exported_model["path"], exported_model["run"]
    card = _card(vdir)
    with open(os.path.join(run["data"], "dataset.json")) as f:
        dataset = json.load(f)
    splits = card["tfmicle"]["training_data"]["splits"]
    assert set(splits) == set(dataset["splits"]) == {"train", "validation", "test"}
    md = open(os.path.join(vdir, mf.MODEL_CARD_MD)).read()
    for name, s in dataset["splits"].items():
        assert (splits[name]["cases"], splits[name]["images"]) == (s["cases"], s["images"])
        assert f"| {name} | {s['cases']} | {s['images']} |" in md
    with open(os.path.join(run["model_dir"], "best", "state.json")) as f:
        best = json.load(f)
    (val,) = _perf(card, best["metric"], "validation")
    assert val["value"] == pytest.approx(best["value"]) and val["confidence_interval"] is None
    with open(os.path.join(run["pretrain_dir"], "config.yaml")) as f:
        pre_cfg = yaml.safe_load(f)
    (pre,) = card["tfmicle"]["pretraining"]["runs"]
    assert (pre["method"], pre["steps"]) == (pre_cfg["method"], pre_cfg["train"]["train_steps"])
    assert f"MICLe pretraining for {pre_cfg['train']['train_steps']} steps" in md
    # the fixture's records have no metadata columns: the card says subgroups are unknown
    assert card["tfmicle"]["subgroups"]["evaluated"] is False
    assert "Subgroup performance is unknown" in md.split("### Subgroups")[1]
    assert TO_COMPLETE in md.split("## Intended use")[1].split("##")[0]


@pytest.mark.slow
def test_card_is_outside_the_marker_so_completing_it_keeps_the_version_published(
        exported_model, tmp_path):
    vdir = str(tmp_path / "1")
    shutil.copytree(exported_model["path"], vdir)
    with open(os.path.join(vdir, mf.PUBLISHED_FILE)) as f:
        listed = json.load(f)["files"]
    assert mf.MODEL_CARD_JSON not in listed and mf.MODEL_CARD_MD not in listed
    assert mf.SAVED_MODEL_FILE in listed
    with open(os.path.join(vdir, mf.MODEL_CARD_MD), "a") as f:
        f.write("\nIntended use: second reader for dermoscopy triage.\n")
    assert mf.unpublished_reason(vdir) is None
    os.remove(os.path.join(vdir, mf.MODEL_CARD_JSON))   # a version without a card is whole too
    assert mf.unpublished_reason(vdir) is None and mf.incomplete_reason(vdir) is None


# a dataset.json as data_prep writes it (per-class counts, metadata columns, duplicates)
DATASET = {"task": "multiclass", "class_names": ["nevus", "melanoma"],
           "metadata_columns": ["sex", "age"],
           "splits": {"train": {"cases": 30, "images": 41, "patients": 28,
                                "label_counts": {"nevus": 21, "melanoma": 9}},
                      "test": {"cases": 10, "images": 12, "patients": 10,
                               "label_counts": {"nevus": 6, "melanoma": 4}}},
           "source": {"format": "ham10000", "input": "/data/ham"},
           "duplicates": {"same_file": 0, "same_content": 3}, "near_duplicates": {}}
METADATA = {"task": "multiclass", "class_names": ["nevus", "melanoma"], "image_size": 64,
            "embedding_dim": 128, "encoder": "resnet", "step": 40, "best_metric": "val_auc",
            "validation": {"val_auc": 0.81, "val_loss": 0.5},
            "config": {"model": {"depth": 18, "width_multiplier": 1, "sk_ratio": 0.0},
                       "finetune": {"init": "imagenet"}, "train": {"train_steps": 40}},
            "train": {"data_dir": "/records", "train_split": "train", "eval_split": "valid",
                      "label_fraction": 1.0, "train_cases": 30, "train_images": 41,
                      "init": "imagenet"},
            "calibration": {"method": "temperature scaling (NLL)", "split": "calib",
                            "num_images": 20, "temperature": 1.7,
                            "before": {"ece": 0.21, "nll": 0.9, "brier": 0.3},
                            "after": {"ece": 0.04, "nll": 0.6, "brier": 0.25}}}


def test_card_of_data_prep_records_has_per_class_counts_and_calibration():
    card = build_card(METADATA, "derm", 3, DATASET, {"train_images_per_class": [30, 11]}, [])
    md = render(card)
    assert "| train | 30 | 41 | 28 | 21 | 9 |" in md and "| test | 10 | 12 | 10 | 6 | 4 |" in md
    assert card["tfmicle"]["training_data"]["splits"]["test"]["label_counts"] == \
        {"nevus": 6, "melanoma": 4}
    (before,) = _perf(card, "ece", "before")
    (after,) = _perf(card, "ece", "after")
    assert (before["value"], after["value"]) == (0.21, 0.04)
    assert "ImageNet" in card["model_details"]["overview"]
    # metadata exists but nothing measured subgroups yet: unknown, and which columns exist
    statement = card["tfmicle"]["subgroups"]["statement"]
    assert statement.startswith("Subgroup performance is unknown") and "sex, age" in statement
    assert card["model_details"]["version"]["name"] == "3"
    assert card["model_parameters"]["data"]["train"]["sensitive"]["sensitive_data"] == ["sex", "age"]


def test_card_without_dataset_json_says_what_it_does_not_know():
    card = build_card(METADATA, "derm", 1, None, {}, [{"path": "/gone", "readable": False}])
    text = " ".join(x["description"] for x in card["considerations"]["limitations"])
    assert "dataset.json (/records) could not be read" in text
    assert "Counts per split: unknown" in render(card)


METRICS = {"class_names": ["nevus", "melanoma"], "num_cases": 10, "num_images": 12,
           "case": {"num_labeled": 10, "top1_accuracy": 0.8, "mean_auc": 0.9, "roc_auc": {},
                    "ci95": {"top1_accuracy": [0.6, 1.0], "mean_auc": [0.7, 1.0]}},
           "subgroups": {"sex": {"column": "sex", "groups": {
               "female": {"num_cases": 6, "num_images": 7,
                          "case": {"mean_auc": 0.95, "ci95": {"mean_auc": [0.8, 1.0]}}},
               "male": {"num_cases": 4, "num_images": 5,
                        "case": {"mean_auc": 0.7, "ci95": {"mean_auc": [0.4, 1.0]}}}},
               "largest_gap": {"metric": "mean_auc", "best": "female", "worst": "male",
                               "best_value": 0.95, "worst_value": 0.7, "difference": 0.25,
                               "ci95": [-0.1, 0.5]}},
               "site": {"column": None, "groups": {}, "largest_gap": None}}}


def test_scoring_adds_heldout_subgroups_with_their_gap_and_keeps_the_original():
    card = build_card(METADATA, "derm", 3, DATASET, {}, [])
    before = json.dumps(card)
    out = add_scoring(card, METRICS, "test.csv")
    assert json.dumps(card) == before
    (acc,) = _perf(out, "top1_accuracy", "held-out")
    assert acc["value"] == 0.8 and acc["confidence_interval"] == {"lower_bound": 0.6,
                                                                  "upper_bound": 1.0}
    (male,) = _perf(out, "mean_auc", "sex = male")
    assert male["value"] == 0.7
    statement = out["tfmicle"]["subgroups"]["statement"]
    assert "difference 0.250 (95 % CI -0.100 to 0.500)" in statement
    assert "unknown for site" in statement
    md = render(out)
    assert "| female | 6 | 7 | 0.950 (0.800 to 1.000) |" in md


# --------------------------------------------------------------------------- score

@pytest.mark.slow
def test_score_model_card_adds_the_heldout_metrics_of_metrics_json(exported_model, tmp_path,
                                                                   capsys):
    from conftest import run_main
    from tfmicle.score.cli import main
    out = tmp_path / "scored"
    code, _, err = run_main(main, ["--model", exported_model["path"], "--data",
                                   exported_model["run"]["data"], "--split", "test", "--out",
                                   out, "--bootstrap", "50", "--model-card", "-q"], capsys)
    assert code == 0, err
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    card = _card(out)
    for key in ("top1_accuracy", "mean_auc", "mean_pr_auc"):
        (m,) = _perf(card, key, "held-out")
        lo, hi = metrics["case"]["ci95"][key]
        assert m["value"] == pytest.approx(metrics["case"][key])
        assert m["confidence_interval"] == {"lower_bound": pytest.approx(lo),
                                            "upper_bound": pytest.approx(hi)}
    assert card["tfmicle"]["heldout"]["num_cases"] == metrics["num_cases"]
    assert "Subgroup performance is unknown" in (out / "model_card.md").read_text()
    assert _card(exported_model["path"])["tfmicle"]["heldout"] is None  # the version's own


@pytest.mark.slow
def test_score_model_card_refuses_a_version_without_a_card(exported_model, tmp_path, capsys):
    from conftest import run_main
    from tfmicle.score.cli import main
    vdir = tmp_path / "models" / "m" / "1"
    shutil.copytree(exported_model["path"], vdir)
    os.remove(vdir / mf.MODEL_CARD_JSON)
    code, _, err = run_main(main, ["--model", vdir, "--data", exported_model["run"]["data"],
                                   "--out", tmp_path / "o", "--model-card"], capsys)
    assert code == 2 and "has no model card" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


# --------------------------------------------------------------------------- serving

def _client(base, card_dir=None):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.repository import ModelRepository
    from test_serving_units import FakeModel

    class CardModel(FakeModel):
        path = str(card_dir or base / "1")

    repository = ModelRepository(base, "fake", loader=lambda folder, name, version: CardModel(version))
    app = create_app(ServingConfig(model_base_path=str(base), model_name="fake", api_key=KEY),
                     repository)
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def _fake_version(base):
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"\x08")
    mf.publish(base / "1")


def test_card_route_is_a_json_404_without_a_card_and_needs_the_key(tmp_path):
    pytest.importorskip("httpx")
    _fake_version(tmp_path)
    with _client(tmp_path) as client:
        for path in ("/v1/models/fake/card", "/v1/models/fake/versions/1/card?format=md"):
            r = client.get(path)
            assert r.status_code == 404 and "has no model card" in r.json()["error"]
        assert client.get("/v1/models/fake/card", headers={"Authorization": ""}).status_code == 401
        assert client.get("/v1/models/other/card").status_code == 404
        assert client.get("/v1/models/fake/versions/2/card").status_code == 404


@pytest.mark.slow
def test_card_route_returns_the_exported_card_as_json_and_markdown(exported_model, tmp_path):
    pytest.importorskip("httpx")
    _fake_version(tmp_path)
    vdir = exported_model["path"]
    with _client(tmp_path, vdir) as client:
        for path in ("/v1/models/fake/card", "/v1/models/fake/versions/1/card"):
            r = client.get(path)
            assert r.status_code == 200 and r.json() == _card(vdir)
        r = client.get("/v1/models/fake/card?format=md")
        assert r.headers["content-type"].startswith("text/markdown")
        assert r.text == open(os.path.join(vdir, mf.MODEL_CARD_MD)).read()
        assert client.get("/v1/models/fake/card?format=pdf").status_code in (400, 422)
