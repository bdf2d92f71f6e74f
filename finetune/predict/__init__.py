"""`croptune predict`: a serving bundle + a new catalog -> one JSON answer per item.

Every item goes through the training-time code, on a run store of its own (the work
folder): the catalog is ingested with `croptune label`'s validation and image
normalisation; the bundle's box source (its detector, a box teacher, or none) boxes the
photos; `toolkit.crops.crop_item` cuts and de-duplicates the crops under the bundle's crop
config, exactly as `croptune crop` did; `toolkit.dataset.rows.item_example` picks the images
under the image budget and writes the prompt, exactly as `croptune dataset build` did; the
student answers. No train/serve skew by construction: there is no second implementation.

The work folder is written as each stage of each item finishes, so a killed predict
resumes: finished items are not asked again, boxes already proposed are not proposed again.

bundle.py reads the bundle; box_sources.py the detector's and no boxes; predictor.py one
item's way to its record; run.py the run over a catalog; stats.py its summary and timings.
"""

from finetune.predict.box_sources import DetectorBoxes, NoBoxes
from finetune.predict.bundle import Bundle, load_bundle
from finetune.predict.predictor import PREDICTOR, Predictor
from finetune.predict.run import default_workdir, predict_catalog
from finetune.predict.stats import STATS_FILE, PredictSummary

__all__ = [
    "PREDICTOR",
    "STATS_FILE",
    "Bundle",
    "DetectorBoxes",
    "NoBoxes",
    "PredictSummary",
    "Predictor",
    "default_workdir",
    "load_bundle",
    "predict_catalog",
]
