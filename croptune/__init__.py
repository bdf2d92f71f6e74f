"""The croptune app: the command line and the stage orchestration, above toolkit, teacher_labeling and finetune."""
