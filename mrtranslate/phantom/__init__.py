"""Synthetic multi-contrast brain phantoms (T1, T1ce, T2, FLAIR, tumour labels) in the BraTS 2021 layout:
a data source for trying and testing training, not a training stage. Needs the ``train`` extra.

- :mod:`.simulator`: ``simulate_subject`` and ``write_dataset``
- :mod:`.anatomy`, :mod:`.physics`, :mod:`.tumor`, :mod:`.acquisition`: its parts
"""
