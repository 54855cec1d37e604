"""Layer 3, the experiment driver: everything that runs whole active-learning experiments on top of
the library (``uaal_ext.loss``, ``uaal_ext.uncertainty``, ``uaal_ext.acquisition``, ``uaal_ext.metrics``).

- :mod:`.data`: datasets (one table), transforms;
- :mod:`.models`: DeepLabv3+ presets (segmentation_models_pytorch), weights files;
- :mod:`.training`: the training loop (standard or UAAL) and evaluation;
- :mod:`.al`: the active-learning loop, its config and its resumable state;
- :mod:`.report`, :mod:`.maps`: tables, CSV files and figures of finished experiments;
- :mod:`.cli`: the ``uaal`` command; :mod:`.runtime`: process settings it applies.
"""
