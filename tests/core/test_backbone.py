"""Every registered backbone is a `Backbone`: the protocol the extractor and checkpoint loader rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvh.core.backbone import Backbone
from mvh.extractor.models import create_model, list_models, load_weights

NAMES = [info.name for info in list_models()]


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_backbone_follows_the_protocol(name: str) -> None:
    with torch.device("meta"):  # no weights allocated: checks the shape of the class, not its numbers
        model = create_model(name)
    info = next(i for i in list_models() if i.name == name)
    assert isinstance(model, Backbone)
    assert model.output_dim == info.output_dim


def test_a_module_without_the_protocol_is_refused_by_the_loader(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    assert not isinstance(nn.Linear(2, 2), Backbone)
    with pytest.raises(TypeError, match="not a Backbone"):
        load_weights(nn.Linear(2, 2), path)
