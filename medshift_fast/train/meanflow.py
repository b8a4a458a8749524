"""The MeanFlow route of ``medshift distill`` (``--method meanflow``, train/distill.py).

An average-velocity student u(z, s, e, y) (``models.student``) is trained at points of the
teacher's paths with the MeanFlow identity u = v + (e - s) du/ds (Geng et al. 2025): v is the
teacher's guided velocity, du/ds the total derivative along the flow by a Jacobian-vector product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["meanflow_loss"]


def meanflow_loss(task, tr, batch) -> torch.Tensor:
    """The MeanFlow identity u = v + (e - s) du/ds with the teacher's guided velocity v.

    Args:
        task: the ``DistillTask`` (its config, pairs, settings and teacher).
        tr: the ``Trainer``.
        batch: (images, labels) of one micro-batch.
    """
    from ..flow.guidance import make_field
    from ..ops import guided_velocity

    x1, y_img = batch
    cfg, st, dev = task.cfg, tr.model, tr.device
    b = x1.shape[0]
    g = tr.gen
    srcs = torch.tensor(sorted({a for a, _ in task.pairs}))
    tgts = torch.tensor(sorted({c for _, c in task.pairs}))
    leg = (torch.rand(b, generator=g) < 0.5).long()  # 1 = decode leg, 0 = encode leg
    tau = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * torch.rand(b, generator=g)
    diag = torch.rand(b, generator=g) < 0.25  # s = e: plain flow matching on the teacher
    y_tgt = tgts[torch.randint(0, len(tgts), (b,), generator=g)]
    y_src = srcs[torch.randint(0, len(srcs), (b,), generator=g)]
    # encode: from s = 1 (the image itself) to e = tau; decode: from s = tau to e = 1
    s = torch.where(leg == 1, tau, torch.ones(b))
    e = torch.where(leg == 1, torch.ones(b), tau)
    e = torch.where(diag, s, e)
    x1 = task._crop_pair(tr, x1, x1)[0]
    x0 = torch.randn(x1.shape, generator=g).to(dev, x1.dtype)
    sb = s.to(dev).view(-1, 1, 1, 1).to(x1.dtype)
    z = sb * x1 + (1.0 - sb) * x0
    w_enc, w_dec = task.settings["guidance_encode"], task.settings["guidance_decode"]
    y_enc = st.encode_label(y_src.to(dev))
    y_field = torch.where(leg.to(dev) == 1, y_tgt.to(dev), y_enc)
    del y_img
    with torch.no_grad():  # the teacher's guided velocity at (z, s), per leg's guidance
        v = torch.empty_like(z)
        for lg, w in ((0, w_enc), (1, w_dec)):
            m = (leg == lg).to(dev)
            if bool(m.any()):
                vc, vu = make_field(task.teacher.model, y_field[m], w)(z[m], s.to(dev)[m])
                v[m] = guided_velocity(vc, vu, w).to(z.dtype)
    s_d, e_d, lg_d = s.to(dev), e.to(dev), leg.to(dev)

    def u_fn(zz, ss):
        return st.average_velocity(zz, ss, e_d, y_field, lg_d)

    with tr.autocast():
        u, dudt = torch.func.jvp(u_fn, (z, s_d), (v, torch.ones_like(s_d)))
    target = (v + (e_d - s_d).view(-1, 1, 1, 1) * dudt).detach()
    return F.mse_loss(u.float(), target.float())
