"""Training-side tools of mrtranslate: datasets, losses, the three training stages, export.

Needs the ``train`` extra (``pip install "mrtranslate[train]"``). The core package never imports this one;
import the submodules you need (e.g. ``mrtranslate.training.export``).
"""
