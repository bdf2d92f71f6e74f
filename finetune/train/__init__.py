"""Fine-tuning a student VLM (LoRA, or every weight) with TRL's SFTTrainer on a croptune dataset.

config.py     TrainConfig, load_train_config / save_train_config, lora_target_of
data.py       the saved dataset's splits, checked, and their counts
arguments.py  TRL's SFTConfig: precision, trackers, the checkpoint to resume from
model.py      the base model (4-bit for QLoRA), processor image options, the LoRA config
callbacks.py  the progress display (a TrainerCallback)
trainer.py    build_trainer and train: one run and the folder it saves

The stage's entry points, used by the CLI, the pipeline, benchmarks and tests, are
re-exported here: `finetune.train.train(TrainConfig(...))`.
"""

from finetune.train.config import TrainConfig, load_train_config, save_train_config
from finetune.train.trainer import train

__all__ = ["TrainConfig", "load_train_config", "save_train_config", "train"]
