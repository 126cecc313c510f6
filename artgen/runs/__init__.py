"""The run record, between inference and training: ``record`` (one registry from a run's
kind to its options and ``Run`` class: load, generate), ``checkpoint`` (config.json,
resume policy, checkpoint files) and ``lora_format`` (kohya's LoRA key names). Trainers
(artgen.train) write runs; nothing here imports them."""
