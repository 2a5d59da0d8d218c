"""The fast inference copy of an encoder computes what the encoder computes."""

import torch
from torch import nn

from hypermeta.nn.conv4 import Conv4
from hypermeta.nn.inference import inference_copy


def trained_looking_conv4() -> Conv4:
    """A Conv-4 whose batch norms hold statistics and affine weights far from the defaults."""
    torch.manual_seed(0)
    encoder = Conv4(hidden=8)
    for norm in encoder.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.2, 3.0)
            norm.weight.data.normal_()
            norm.bias.data.normal_()
    return encoder


def test_with_running_statistics_each_batch_norm_is_folded_and_the_outputs_agree():
    encoder = trained_looking_conv4().eval()
    fast = inference_copy(encoder)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    block = fast.features[0]
    assert [type(layer) for layer in block] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), encoder(x), rtol=1e-5, atol=1e-5)
    # the original is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in encoder.modules()) == 4


def test_a_batch_norm_in_training_mode_keeps_normalising_by_the_batch():
    encoder = trained_looking_conv4().train()
    fast = inference_copy(encoder)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 4
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        expected = trained_looking_conv4().train()(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)


def test_a_convolution_without_bias_and_a_norm_without_affine_weights_fold_too():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    fast = inference_copy(net)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
