import torch

from fsdtrain.model.losses import LossConfig, wta_loss


def test_wta_regresses_only_the_best_mode():
    target = torch.zeros(1, 4, 3)
    traj = torch.stack([torch.full((4, 3), 5.0), torch.full((4, 3), 0.1)])[None].requires_grad_(True)  # [1, 2, 4, 3]
    logits = torch.zeros(1, 2, requires_grad=True)
    out = wta_loss(traj, logits, target, LossConfig(regression="l1", yaw_weight=1.0, cls_weight=1.0))
    out["loss"].backward()
    assert traj.grad[0, 0].abs().sum() == 0  # the far mode gets no regression gradient
    assert traj.grad[0, 1].abs().sum() > 0
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # classification pushes towards the best mode


def test_exact_prediction_has_no_regression_loss():
    target = torch.randn(3, 4, 3)
    traj = target[:, None].repeat(1, 2, 1, 1)
    out = wta_loss(traj, torch.zeros(3, 2), target, LossConfig())
    assert out["reg"] == 0 and out["yaw"] == 0


def test_per_sample_terms_average_to_the_batch_terms():
    torch.manual_seed(0)
    traj, logits, target = torch.randn(5, 3, 4, 3), torch.randn(5, 3), torch.randn(5, 4, 3)
    mean = wta_loss(traj, logits, target, LossConfig())
    each = wta_loss(traj, logits, target, LossConfig(), reduction="none")
    for k, v in mean.items():
        assert each[k].shape == (5,) and torch.allclose(each[k].mean(), v)
    assert torch.allclose(wta_loss(traj[2:3], logits[2:3], target[2:3], LossConfig())["loss"], each["loss"][2])
