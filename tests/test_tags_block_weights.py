"""LoRA Block Weight vectors: layouts and presets of hako-mikan/sd-webui-lora-block-weight."""
import pytest

from lora_core.tags import BLOCK_IDS_26, parse_prompt
from lora_core.tags.block_weights import LAYOUTS, BlockWeightError, resolve


def as_dict(vec):
    return dict(zip(BLOCK_IDS_26, vec))


def test_layout_26_is_base_in_mid_out():
    assert BLOCK_IDS_26[0] == "BASE" and BLOCK_IDS_26[1] == "IN00" and BLOCK_IDS_26[13] == "M00"
    assert BLOCK_IDS_26[14] == "OUT00" and BLOCK_IDS_26[25] == "OUT11" and len(BLOCK_IDS_26) == 26


def test_17_values_spread_by_block_id_and_unlisted_blocks_are_zero():
    values = ",".join(str(i) for i in range(1, 18))
    vec = as_dict(resolve(values))
    assert vec["BASE"] == 1 and vec["IN01"] == 2 and vec["IN02"] == 3 and vec["IN04"] == 4
    assert vec["M00"] == 8 and vec["OUT03"] == 9 and vec["OUT11"] == 17
    for missing in ("IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"):
        assert vec[missing] == 0


def test_12_values_are_sdxl_blocks():
    vec = as_dict(resolve("9,1,2,3,4,5,6,7,8,10,11,12"))
    assert vec["BASE"] == 9 and vec["IN04"] == 1 and vec["IN08"] == 4 and vec["M00"] == 5
    assert vec["OUT00"] == 6 and vec["OUT05"] == 12 and vec["OUT06"] == 0 and vec["IN01"] == 0


def test_26_values_identity():
    values = [i / 10 for i in range(26)]
    assert resolve(",".join(map(str, values))) == tuple(values)


# Presets exactly as the extension ships them (17 values, SD1/SD2).
SD1 = {
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
}


@pytest.mark.parametrize("name", list(SD1))
def test_sd1_presets_match_extension_values(name):
    assert resolve(name) == resolve(SD1[name])
    assert resolve(name.lower()) == resolve(SD1[name])


def test_sdxl_presets_group_blocks_like_sd1():
    ins, outd, outs, midd = (as_dict(resolve(n, "sdxl")) for n in ("INS", "OUTD", "OUTS", "MIDD"))
    assert [b for b, v in ins.items() if v] == ["BASE", "IN04", "IN05"]
    assert [b for b, v in outd.items() if v] == ["BASE", "OUT00", "OUT01", "OUT02"]
    assert [b for b, v in outs.items() if v] == ["BASE", "OUT03", "OUT04", "OUT05"]
    assert [b for b, v in midd.items() if v] == ["BASE", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02"]
    assert sum(resolve("ALL", "sdxl")) == 12


def test_family_picks_the_preset_table_in_the_parser():
    sd1 = parse_prompt("<lora:x:lbw=INS>").requests[0].lbw
    sdxl = parse_prompt("<lora:x:lbw=INS>", family="sdxl").requests[0].lbw
    assert as_dict(sd1)["IN01"] == 1 and as_dict(sdxl)["IN01"] == 0 and as_dict(sdxl)["IN04"] == 1


def test_positional_preset_and_w_alias_and_dynamic_x():
    assert parse_prompt("<lora:x:0.8:OUTD>").requests[0].lbw == resolve("OUTD")
    assert parse_prompt("<lora:x:0.8:OUTD>").requests[0].unet == 0.8
    assert parse_prompt("<lora:x:w=OUTS>").requests[0].lbw == resolve("OUTS")
    req = parse_prompt("<lora:x:lbw=X,1,1,1,1,1,1,1,X+0.25,1,1,1,1,1,1,1,X-1:x=0.5>").requests[0]
    vec = as_dict(req.lbw)
    assert vec["BASE"] == 0.5 and vec["OUT03"] == 0.75 and vec["OUT11"] == -0.5


@pytest.mark.parametrize("bad", ["", "1", "1,2", "ZZZ", "1,2,3,4,5,6,7,8,9,10,11,x", "inf," * 11 + "1"])
def test_bad_vectors_raise_block_weight_error(bad):
    with pytest.raises(BlockWeightError):
        resolve(bad)


def test_all_layouts_known():
    assert sorted(LAYOUTS) == [12, 17, 20, 26]
    for layout in LAYOUTS.values():
        assert set(layout) <= set(BLOCK_IDS_26) and layout[0] == "BASE"
