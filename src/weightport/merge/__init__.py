"""Merged LoRA checkpoints as a streaming, random-access view.

``merged_files(base, adapter)`` turns a base model's files and a PEFT LoRA adapter's files
into the files of the merged model, computed on the fly and bit-identical to peft's
``merge_and_unload`` + ``save_pretrained`` on CPU. ``validate_merge`` checks the pair from
headers alone.
"""

from weightport.merge.adapter import AdapterConfig, parse_adapter_key
from weightport.merge.plan import MergeSummary, validate_merge
from weightport.merge.safetensors_format import SafetensorsHeader, TensorInfo, read_header
from weightport.merge.view import MergedShard, merged_files

__all__ = [
    "AdapterConfig",
    "MergeSummary",
    "MergedShard",
    "SafetensorsHeader",
    "TensorInfo",
    "merged_files",
    "parse_adapter_key",
    "read_header",
    "validate_merge",
]
