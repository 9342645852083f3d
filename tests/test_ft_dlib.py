"""dlib_face fine-tuned: its face code standardised before the new output layer, saved and loaded whole."""

import pytest

torch = pytest.importorskip("torch")

from classify.ft_net import create_finetune_net  # noqa: E402
from extract.registry import get_spec  # noqa: E402


def test_the_new_layer_on_dlibs_face_code_standardises_it_and_round_trips():
    spec = get_spec("dlib_face")
    net, info = create_finetune_net(spec, "random:0", outputs=3, reinit="head",
                                    train_from="blocks.10", input_size=112)
    assert info["output_layer"] == "ft_head" and info["input_size"] == 112
    assert isinstance(net.extra_head[0], torch.nn.BatchNorm1d)
    assert all(n.startswith(("blocks.", "conv1", "bn1")) for n in info["frozen"])
    assert not any(n.startswith(("blocks.10", "blocks.13", "fc")) for n in info["frozen"])
    faces = torch.randint(0, 256, (6, 112, 112, 3), dtype=torch.uint8)
    net.train()
    net(faces).sum().backward()  # one step's worth of batch statistics
    net.eval()
    with torch.inference_mode():
        want = net(faces)
    again, _ = create_finetune_net(spec, "random:1", outputs=3, reinit="head", input_size=112)
    again.load_exported(net.export_state()).eval()
    with torch.inference_mode():
        torch.testing.assert_close(again(faces), want)
    # other networks whose output is their code keep a plain linear layer
    tiny, _ = create_finetune_net(get_spec("timm:test_efficientnet"), "random:0", outputs=2)
    assert isinstance(tiny.extra_head, torch.nn.Linear)


def test_an_input_size_too_small_for_dlibs_layers_is_one_clear_error():
    """dlib's ResNet pools four times: 64-pixel faces leave nothing for a 3 x 3 kernel. That is
    said before any data is read, naming the size and the network's own, not a torch error."""
    from featbench.core.errors import UsageError

    with pytest.raises(UsageError, match=r"--input-size 64 is too small for dlib_face.*150"):
        create_finetune_net(get_spec("dlib_face"), outputs=12, reinit="head", input_size=64)
