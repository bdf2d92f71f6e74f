"""The dataset stage: labeled items -> a `datasets` DatasetDict of multi-image examples.

config.py DatasetConfig; splits.py the one split authority (recorded in the run store);
rows.py an item's example (images, prompt, answer) as a row; stored.py how its images are
stored (their files' bytes, or PNG of what croptune changed); chunks.py items built in
chunks, in worker processes, reused by a rerun; build.py build_dataset.
"""

from toolkit.dataset.build import build_dataset
from toolkit.dataset.config import DatasetConfig
from toolkit.dataset.rows import dataset_features, example_row
from toolkit.dataset.splits import SPLIT_KEYS

__all__ = ["SPLIT_KEYS", "DatasetConfig", "build_dataset", "dataset_features", "example_row"]
