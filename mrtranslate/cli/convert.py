"""`mrtranslate convert`: published Lightning checkpoints -> model folder."""
