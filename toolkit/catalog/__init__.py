"""Catalog ingest: JSONL, CSV, Parquet or a `datasets` folder into validated items.

items.py the data types; columns.py the column mapping; formats.py the readers; load.py
load_catalog; checks.py the checks on pixels and schema; ingest.py into the run store and back.
"""

from toolkit.catalog.checks import attribute_problems, inspect_item
from toolkit.catalog.columns import parse_column_mapping
from toolkit.catalog.ingest import IngestSummary, ingest_catalog, load_ingested_image
from toolkit.catalog.items import Catalog, CatalogBox, CatalogItem, Problem, item_fingerprint
from toolkit.catalog.load import load_catalog

__all__ = [
    "Catalog",
    "CatalogBox",
    "CatalogItem",
    "IngestSummary",
    "Problem",
    "attribute_problems",
    "ingest_catalog",
    "inspect_item",
    "item_fingerprint",
    "load_catalog",
    "load_ingested_image",
    "parse_column_mapping",
]
