"""napari integration of napari-miner: the "MINER fit" dock widget, a reader, sample data.

This layer is thin: it turns the public API (:mod:`napari_miner`) and its progress model
(:mod:`napari_miner.fitting.progress`) into napari layers and widgets, and never reimplements core
logic. Modules: ``widget`` (the dock widget), ``_inputs`` (what to fit), ``_settings`` (the
magicgui form of :class:`~napari_miner.MinerConfig`), ``_worker`` (the fit's generator, run in a
thread), ``_fit_worker`` (thread-worker lifecycles), ``_live_layers`` (the layers of a fit),
``_results`` (*Save model…*, *Add mesh*), ``_plot`` (the PSNR plot), ``levels``, ``reader`` and
``sample_data``.
"""
