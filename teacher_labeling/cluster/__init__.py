"""Labeling on a Ray cluster: the driver's requests, Ray Data's stages, the shards it imports.

`config.py` the `ray:` section of label.yaml; `requests.py` a pending request as a row;
`stages.py` what runs on the workers (image preparation, the HTTP teacher actors, the vLLM
engine processor); `shards.py` the answer shards and their import into the run store;
`run.py` the driver (`label_on_ray`).
"""
