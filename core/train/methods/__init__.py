"""The training methods, one module each; :mod:`core.train.registry` finds them by name."""
