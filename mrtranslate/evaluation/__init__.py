"""Evaluation: image metrics in a brain mask, the intensity lookup-table baseline, dataset runs, their
reports and figures.

- :mod:`.metrics`: PSNR, NMSE, MAE and 3D SSIM, each image scaled by its own brain percentiles
- :mod:`.lut`: the 1-D intensity lookup table (E[target | source intensity]) baseline
- :mod:`.evaluate`: ``evaluate``, a model (and baselines) over a dataset folder
- :mod:`.report`, :mod:`.figures`: ``summary.json``, ``cases.csv``, the Markdown table and the figures
"""
