"""The model card of an exported version: what it was trained and tested on, how well it
did, and what nobody measured. ``tfmicle.export`` writes it (``build.build_card``, then
``store.write_card`` into the version folder before the publish marker), ``tfmicle.score
--model-card`` writes a copy with held-out results added (``scoring.add_scoring``), and
the server answers ``GET /v1/models/NAME/card`` from the files (``store.read_card``).
``markdown.render`` turns the JSON into model_card.md.

The JSON uses the field names of Google's Model Card Toolkit schema (v0.0.2:
model_details, model_parameters {data {train, eval}}, quantitative_analysis
{performance_metrics [{type, value, slice, confidence_interval}], graphics},
considerations); numbers stay JSON numbers. Facts the schema has no field for
(counts per split and class, pretraining history, calibration, held-out results,
subgroups, shift) sit under "tfmicle". model_card.md is rendered from the JSON only.

Both files are documentation, not the model: ``model_format.UNLISTED_FILES`` keeps them
out of published.json, so a deployer completes the placeholders (TO_COMPLETE) in place
without unpublishing the version. Foundation: no TensorFlow. Map: docs/architecture.md.
"""

