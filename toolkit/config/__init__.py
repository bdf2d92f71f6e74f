"""Stage configs: a YAML file sets the values, `key=value` arguments override them.

The one loader of every config croptune reads (`load`), its parts (`fields`: what a field
holds; `paths`: relative paths made absolute; `keys`: unknown keys named; `overrides`:
`key=value`), the config documentation (`docs`) and the plain YAML croptune writes (`dump`).
Configs croptune writes hold absolute paths.
"""

from toolkit.config.dump import dump_config, dump_yaml
from toolkit.config.fields import ConfigPath
from toolkit.config.load import load_stage_config

__all__ = ["ConfigPath", "dump_config", "dump_yaml", "load_stage_config"]
