"""Ray Tune sweeps over both training methods: one trial = one TorchTrainer run of the same code.

- :mod:`core.tune.config`: ``TuneJobConfig``, the sweep's YAML (target, base training section,
  search space, scheduler, searcher, trial counts).
- :mod:`core.tune.space`: ``{loguniform: [a, b]}``-style specs over dotted training-config keys,
  checked against the target config and turned into Tune search domains.
- :mod:`core.tune.trial`: the per-trial function trainable (``fit_one`` / ``train_clip_decoder``
  with Tune's report callback).
- :mod:`core.tune.cleanup`: releases what a stopped trial's Train run leaves on the cluster.
- :mod:`core.tune.results`: per-trial records, the Parquet / CSV table, the plot, the best preset.
- :mod:`core.tune.sweep`: builds (or restores) the Tuner, runs it, writes the outputs.

:mod:`core.tune.config` and :mod:`core.tune.space` import no Ray, so a sweep's YAML loads and is
checked without it; the other modules subclass Ray's callback types.
"""
