"""Write a synthetic example catalog: python examples/make_catalog.py OUT_DIR --items 30 --seed 0.

--kind products (default): the demo's product photos with small printed labels.
--kind marks: the crop ablation's catalog (bench/crop_ablation.py): 448x448 photos, 1-4 per
item, one carrying a small sticker with a CE / UKCA / FCC / RoHS mark.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from croptune.synthetic.catalog import make_example_catalog
from croptune.synthetic.marks import make_marks_catalog

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("out_dir", type=Path, help="folder to write catalog.jsonl and img/ into")
parser.add_argument("--items", type=int, default=30, help="number of items (default 30)")
parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
parser.add_argument(
    "--kind",
    choices=("products", "marks"),
    default="products",
    help="products (the demo catalog) or marks (the crop ablation's); default products",
)
args = parser.parse_args()

make = make_marks_catalog if args.kind == "marks" else make_example_catalog
catalog = make(args.out_dir, n_items=args.items, seed=args.seed)
lines = catalog.read_text(encoding="utf-8").splitlines()
n_images = sum(len(json.loads(line)["images"]) for line in lines)
print(f"wrote {args.items} items ({n_images} photos) to {catalog}")
