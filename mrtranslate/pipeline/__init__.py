"""The ALDM pipeline: tensors in, tensors out (encode -> target_like -> sample -> decode).

- :mod:`.aldm`: ``ALDMPipeline``, the networks and the sampler
- :mod:`.folder`: the model folder on disk (``from_pretrained`` / ``save_pretrained``)
- :mod:`.config`: ``PipelineConfig``, what ``model_index.json`` declares
- :mod:`.options`: ``SamplingOptions`` (steps, eta, strength, samples, seed)
- :mod:`.runtime`: device, precision and the memory planner
"""

from .aldm import ALDMPipeline
from .config import PipelineConfig
from .folder import INDEX_NAME, MAX_JSON_BYTES, load_state_strict, read_model_json
from .options import SamplingOptions
from .runtime import Runtime

__all__ = [
    "ALDMPipeline", "INDEX_NAME", "MAX_JSON_BYTES", "PipelineConfig", "Runtime", "SamplingOptions",
    "load_state_strict", "read_model_json",
]
