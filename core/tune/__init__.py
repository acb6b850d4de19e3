"""Ray Tune sweeps over any registered training method: one trial = one run of the engine.

- :mod:`core.tune.config`: ``TuneJobConfig``, the sweep's YAML (target, base training section,
  search space, scheduler, searcher, trial counts).
- :mod:`core.tune.space`: ``{loguniform: [a, b]}``-style specs over dotted training-config keys,
  checked against the target config and turned into Tune search domains.
- :mod:`core.tune.trial`: the per-trial function trainable (the engine's ``fit`` with Tune's
  report callback).
- :mod:`core.tune.cleanup`: releases what a stopped trial's Train run leaves on the cluster.
- :mod:`core.tune.results`: per-trial records, the Parquet / CSV table, the plot, the best preset.
- :mod:`core.tune.sweep`: builds (or restores) the Tuner, runs it, writes the outputs.

:mod:`core.tune.config` and :mod:`core.tune.space` import no Ray, so a sweep's YAML loads and is
checked without it; the other modules subclass Ray's callback types.
"""
