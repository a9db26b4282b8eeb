"""LoRA training (`python -m lora_core train`): kohya-style data folders, kohya-named LoRA/LoCon
modules, the standard diffusion loss, kohya-format output with ss_* metadata.

    from lora_core.train import Components, NetworkSpec, TrainConfig, scan_folder, train_lora, build_metadata, save_lora_file
"""
from .dataset import DatasetError, TrainingSet, TrainItem, scan_folder, with_trigger
from .network import LoRAModule, LoRANetwork, NetworkSpec, find_targets
from .output import build_metadata, save_lora_file, tensor_data_sha256
from .trainer import Components, TrainConfig, TrainResult, train_lora, training_scheduler

__all__ = [
    "Components", "DatasetError", "LoRAModule", "LoRANetwork", "NetworkSpec", "TrainConfig", "TrainItem",
    "TrainResult", "TrainingSet", "build_metadata", "find_targets", "save_lora_file", "scan_folder",
    "tensor_data_sha256", "train_lora", "training_scheduler", "with_trigger",
]
