"""The student models: presets, where LoRA goes, the offline tiny students, saved weight names.

presets.py     StudentPreset and the bundled YAML presets (finetune/presets/*.yaml)
lora.py        LORA_TARGETS: where LoRA goes per family and part; lora_targets
tiny.py        the croptune:tiny* names, versions and build-once cache: resolve_student
tiny_gemma3.py the tiny Gemma 3 builders (croptune:tiny, croptune:tiny-scratch)
tiny_qwen.py   the tiny Qwen2.5-VL builder (croptune:tiny-qwen)
tiny_reader.py the tiny-reader base: tiny-scratch pretrained on reading.py's generic task
reading.py     that task: pictures of an object and a label, named by colour and shape
vocab.py       the tiny tokenizers' training lines and whole words (SCRATCH_WHOLE_WORDS)
checkpoints.py model folders under the published weight names (save_model_folder)

load_preset and resolve_student, used across finetune, bench and tests, are re-exported here.
"""

from finetune.students.presets import load_preset
from finetune.students.tiny import resolve_student

__all__ = ["load_preset", "resolve_student"]
