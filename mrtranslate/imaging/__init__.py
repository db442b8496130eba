"""NIfTI <-> model space: load and validate a volume, reorder to RAS, resample, crop or pad to the grid,
scale intensities, and the exact inverse; dataset layouts (BraTS 2018-2023, BIDS) found in one place.

- :mod:`.volume`: ``Volume`` (an image with its affine), ``load_volume``, ``save_image``
- :mod:`.resample`: RAS reordering, foreground boxes, smoothing, trilinear sampling
- :mod:`.model_space`: ``Preprocessing``, ``to_model_space`` and ``ModelSpaceInverse``
- :mod:`.layout`: ``find_subjects`` and ``Subject`` (no torch needed)
"""
