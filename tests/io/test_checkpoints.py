"""The one safe checkpoint reader: every failure is one line naming the file (issue 12, case 5)."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from xt_plugins.io.checkpoints import CheckpointError, read_checkpoint, read_safetensors_json
from xt_plugins.monai import read_checkpoint as read_monai_checkpoint
from xt_plugins.torchgeo.predict import load_checkpoint as load_lightning_checkpoint

RAN = []


class Payload:
    def __reduce__(self):
        return (RAN.append, ("this must never run",))


@pytest.mark.parametrize(
    "reader", [read_checkpoint, read_monai_checkpoint, load_lightning_checkpoint]
)
def test_a_malicious_pickle_is_refused_in_one_line_without_running(tmp_path, reader, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "model": Payload()}, f)
    with pytest.raises(CheckpointError) as err:
        reader(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "weights_only=True) refused" in message and "never unpickles" in message
    assert not RAN
    assert capsys.readouterr().err == ""  # torch's pickle-protocol warning is not printed


def test_damaged_files_are_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(3)}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated.pt: cannot be read as a torch") as err:
        read_checkpoint(truncated)
    assert "\n" not in str(err.value) and "save it again" in str(err.value)
    st = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(1000)}, str(st), metadata={"xt_plugins.xtnet_config": "{bad"})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(cut)
    assert str(err.value) == (
        f"{cut}: not a readable safetensors checkpoint (incomplete metadata, file not fully "
        "covered); the file is truncated or damaged: copy or save it again"
    )
    ckpt = read_checkpoint(st)
    with pytest.raises(CheckpointError) as err:
        read_safetensors_json(ckpt, "xt_plugins.xtnet_config")
    assert str(err.value).startswith(f"{st}: the safetensors metadata 'xt_plugins.xtnet_config'")
    assert "not valid JSON" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="xtnet_config' is not valid JSON"):
        read_monai_checkpoint(st)
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="plain.pt: holds no state dict"):
        read_checkpoint(_save(tmp_path / "plain.pt", {"epoch": 3})).state_dict()


def _save(path, obj):
    torch.save(obj, path)
    return path
