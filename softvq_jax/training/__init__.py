"""Trainers: one generic loop (loop.py) and the tasks that plug into it; `registry.TRAINERS`
maps `config.trainer` to a task's `train(config, workdir)`."""
