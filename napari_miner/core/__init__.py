"""Pure numpy/torch MINER core: pyramids, block grids, the block-MLP bank, training and decoding.

Nothing in this package imports napari, Qt or zarr.
"""
