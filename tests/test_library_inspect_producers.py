"""Algorithm and family detection on files written by real producers (LyCORIS, diffusers + PEFT).

Uses torch only to *produce* the files; the code under test reads the header without torch.
"""
import logging

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from lora_core.library.inspect_header import detect_algorithm, family_from_header_or_names  # noqa: E402
from lora_core.formats.header import read_header  # noqa: E402


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Linear(16, 16)
        self.conv = torch.nn.Conv2d(8, 8, 3)


@pytest.mark.parametrize("algo, kwargs, expected", [
    ("lora", {}, "lora"),
    ("locon", {"conv_dim": 4}, "locon"),
    ("loha", {"conv_dim": 4}, "loha"),
    ("lokr", {"conv_dim": 4}, "lokr"),
    ("ia3", {}, "ia3"),
    ("diag-oft", {}, "oft"),
    ("boft", {}, "boft"),
    ("glora", {}, "glora"),
    ("full", {}, "full"),
    ("lora", {"dora_wd": True}, "dora"),
])
def test_lycoris_algorithms(tmp_path, algo, kwargs, expected):
    from lycoris import LycorisNetwork, create_lycoris

    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    targets = ["attn"] if algo == "lora" else ["attn", "conv"]
    saved = {k: getattr(LycorisNetwork, k) for k in ("TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME")}
    LycorisNetwork.apply_preset({"target_module": [], "target_name": targets})
    try:
        net = create_lycoris(Tiny(), 1.0, linear_dim=4, linear_alpha=2, algo=algo, **kwargs)
        net.apply_to()
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    finally:
        for key, value in saved.items():  # apply_preset changes class state: put it back
            setattr(LycorisNetwork, key, value)
    path = str(tmp_path / "x.safetensors")
    save_file(state, path)
    header, _, _ = read_header(path)
    assert detect_algorithm(header)[0] == expected


@pytest.mark.parametrize("context_dim, layers, expected", [(768, 1, "sd1"), (1024, 1, "sd2"), (2048, 2, "sdxl")])
def test_diffusers_peft_unet_family(tmp_path, context_dim, layers, expected):
    diffusers = pytest.importorskip("diffusers")
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from diffusers.utils import convert_state_dict_to_kohya

    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=context_dim, attention_head_dim=8, norm_num_groups=8,
        transformer_layers_per_block=layers,
    )
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_v", "to_q", "to_out.0"]))
    peft_state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    kohya_state = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(peft_state).items()}
    for name, state in (("peft", peft_state), ("kohya", kohya_state)):
        path = str(tmp_path / f"{name}.safetensors")
        save_file(state, path)
        header, metadata, _ = read_header(path)
        assert family_from_header_or_names(header, metadata) == expected, name
        assert detect_algorithm(header)[0] == "lora"


def test_torch_zip_checkpoint_keys_are_read_without_unpickling(tmp_path):
    from lora_core.library.scanner import read_file_summary

    state = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 1280),
    }
    path = str(tmp_path / "x.pt")
    torch.save(state, path)
    summary, error = read_file_summary(path, ".pt")
    assert error is None and summary["algorithm"] == "lora" and summary["family"] == "sdxl"


def test_hostile_pickle_in_checkpoint_is_never_executed(tmp_path):
    import pickle
    import zipfile

    from lora_core.library.scanner import read_file_summary

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = str(tmp_path / "evil.ckpt")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"lora_unet_x.lora_down.weight": Evil()}))
    summary, error = read_file_summary(path, ".ckpt")
    assert not marker.exists()
    assert error is None and summary["algorithm"] == "lora"
