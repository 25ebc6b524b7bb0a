"""The training application's glue, apart from the math, the callbacks, the models and the data:
run folders, checkpoint files, pre-flight checks, signals and exit lines of
``python -m lipschitz_lightning.train``."""
