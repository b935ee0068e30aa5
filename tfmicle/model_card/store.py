"""The card's files in a folder (a model version, or score's output): model_card.json,
and model_card.md rendered from it. Written whole (fileio.write_text: one upload on an
object store), JSON first, so the markdown is never newer than the JSON it shows."""
from __future__ import annotations

import json
import math
import os

from tfmicle import fileio
from tfmicle.model_format import MODEL_CARD_JSON, MODEL_CARD_MD
from tfmicle.model_card.markdown import render


class CardUnreadable(ValueError):
    """model_card.json is there but is not a card (half-copied, or edited by hand badly)."""


def json_safe(obj):
    """NaN / inf -> None, recursively: the card is strict JSON (a browser's parser refuses NaN)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_card(folder: str | os.PathLike, card: dict) -> tuple[str, str]:
    """Writes model_card.json and model_card.md into folder; returns their paths."""
    card = json_safe(card)
    fileio.makedirs(folder)
    path_json, path_md = fileio.join(folder, MODEL_CARD_JSON), fileio.join(folder, MODEL_CARD_MD)
    fileio.write_text(path_json, json.dumps(card, indent=2, allow_nan=False) + "\n")
    fileio.write_text(path_md, render(card))
    return path_json, path_md


def read_card(folder: str | os.PathLike) -> dict | None:
    """The card of a folder; None when it has none (exported before cards, or a SavedModel
    made elsewhere); CardUnreadable when model_card.json does not parse as a card."""
    path = fileio.join(folder, MODEL_CARD_JSON)
    if not fileio.isfile(path):
        return None
    try:
        card = json.loads(fileio.read_text(path))
    except (OSError, ValueError) as e:
        raise CardUnreadable(f"{MODEL_CARD_JSON} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(card, dict) or "model_details" not in card:
        raise CardUnreadable(f"{MODEL_CARD_JSON} has no model_details: not a model card")
    return card


def read_markdown(folder: str | os.PathLike) -> str | None:
    """model_card.md as the folder has it (a deployer may have completed it by hand);
    rendered from model_card.json when only that is there; None when neither is."""
    path = fileio.join(folder, MODEL_CARD_MD)
    if fileio.isfile(path):
        return fileio.read_text(path)
    card = read_card(folder)
    return None if card is None else render(card)


__all__ = ["json_safe", "write_card", "read_card", "read_markdown", "CardUnreadable"]
