"""Config builders (defaults.py: every default, one builder per family) and the one validator
(validate.py), which reads the registries of the layers below."""
