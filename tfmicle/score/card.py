"""Scoring: ``--model-card``. The model version's card (tfmicle.model_card) copied into
the output folder with the primary run's held-out metrics, its subgroup tables and the
shift summary added; the version's own card stays as it was."""
from __future__ import annotations

from tfmicle.model_card.scoring import add_scoring
from tfmicle.model_card.store import CardUnreadable, read_card, write_card
from tfmicle.score.model import ScoreError, ScoringModel


def version_card(model: ScoringModel) -> dict:
    """The card of the scored version; ScoreError (before any scoring) when it has none."""
    try:
        card = read_card(model.path)
    except CardUnreadable as e:
        raise ScoreError(f"--model-card: {model.path}: {e}") from None
    if card is None:
        raise ScoreError(f"--model-card: {model.path} has no model card (exported before "
                         "tfmicle wrote cards, or made elsewhere); re-export the run with "
                         "python -m tfmicle.export, or omit --model-card")
    return card


def write_scored_card(card: dict, out_dir: str, metrics: dict | None, source: str,
                      shift: dict | None, compare: str | None) -> dict:
    """Writes the card with the results into out_dir; {"json", "md"} paths. A primary run
    without labels has no metrics: the card then says held-out performance is unknown."""
    if metrics:
        card = add_scoring(card, metrics, source, shift, compare)
    else:
        card = dict(card, tfmicle={**card.get("tfmicle", {}), "heldout": None})
    path_json, path_md = write_card(out_dir, card)
    return {"json": path_json, "md": path_md}


__all__ = ["version_card", "write_scored_card"]
