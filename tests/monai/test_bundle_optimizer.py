"""The bundle's AdamW exempts Mamba's A_log / D, norms and positions from weight decay."""

from __future__ import annotations

from pathlib import Path

from .conftest import TINY_XTNET

BUNDLE = Path(__file__).resolve().parents[2] / "recipes" / "wsi_tumor_classification"


def test_bundle_optimizer_uses_weight_decay_groups():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    for key, value in TINY_XTNET.items():
        parser[f"network_def#{key}"] = value
    parser["region_size"] = TINY_XTNET["region_size"]
    net = parser.get_parsed_content("network")
    opt = parser.get_parsed_content("optimizer")
    wd = parser.get_parsed_content("weight_decay")
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(net.named_parameters())
    assert sorted(set(decay.values())) == [0.0, wd] and len(decay) == len(names)
    exempt = [n for n in names if n.endswith(("A_log", ".D", "pos_proj.weight"))]
    assert len(exempt) >= 3 and all(decay[id(names[n])] == 0.0 for n in exempt)
    assert decay[id(names["head.fc.weight"])] == wd
