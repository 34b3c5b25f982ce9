"""napari integration of napari-miner: sample data, level layers (and later widgets).

This layer is thin: it turns results of the public API (:mod:`napari_miner`) into napari
layers and never reimplements core logic.
"""
