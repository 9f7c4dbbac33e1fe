"""The gated engine against PyTorch: the same weights in torch.nn.GRU / torch.nn.LSTM + nn.Linear.

Skipped when torch is not installed (it is never a dependency). float64 throughout: outputs
and full-BPTT gradients agree to 1e-10, and truncated gradients against autograd with the whole
state ``detach()``-ed before each loss's window start f(t).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import reference_gated as rg

from bptt_cli.core import gated
from bptt_cli.core.truncation import parse

torch = pytest.importorskip("torch")
F = torch.nn.functional

CELLS = ("gru", "lstm")


class TorchModel(torch.nn.Module):
    def __init__(self, cell: str, params: dict) -> None:
        super().__init__()
        H = params["weight_hh"].shape[1]
        I = params["weight_ih"].shape[1]
        O = params["W_hy"].shape[0]
        kind = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
        self.cell = cell
        self.rnn = kind(I, H, dtype=torch.float64)  # time-major (T, B, I)
        self.out = torch.nn.Linear(H, O, dtype=torch.float64)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, name + "_l0").copy_(torch.from_numpy(params[name]))
            self.out.weight.copy_(torch.from_numpy(params["W_hy"]))
            self.out.bias.copy_(torch.from_numpy(params["b_y"]))

    def grads(self) -> dict:
        g = {name: getattr(self.rnn, name + "_l0").grad for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        g["W_hy"], g["b_y"] = self.out.weight.grad, self.out.bias.grad
        return {k: v.numpy() for k, v in g.items()}

    def state(self, s):
        """A (B, H) or (2, B, H) tensor as the module's (1, B, H) or ((1, B, H), (1, B, H))."""
        return s[None] if self.cell == "gru" else (s[0:1], s[1:2])

    def run(self, x, state):
        """(h (n, B, H), state after as (B, H) / (2, B, H))."""
        h, last = self.rnn(x, self.state(state))
        return h, last[0] if self.cell == "gru" else torch.stack([last[0][0], last[1][0]])


def _loss_terms(y, targets, mask, loss: str):
    """sum of m_tb L_tb over the given steps, y (n, B, O)."""
    if loss == "cross_entropy":
        per = F.cross_entropy(y.reshape(-1, y.shape[-1]), targets.reshape(-1), reduction="none")
    else:
        per = 0.5 * ((y - targets) ** 2).sum(-1).reshape(-1)
    return (per * mask.reshape(-1)).sum()


@pytest.mark.parametrize("loss", ("cross_entropy", "mse"))
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_full_gradients_agree_with_torch(cell, loss):
    T, B, I, H, O = 9, 3, 4, 5, 3
    params, x, targets, mask, h0 = rg.random_problem(np.random.default_rng(11), cell, T, B, I, H, O, loss,
                                                     with_h0=True)
    model = TorchModel(cell, params)
    h, last = model.run(torch.from_numpy(x), torch.from_numpy(h0))
    y = model.out(h)
    states, y_ours = gated.forward(params, x, cell, h0=h0)
    hs = states[1:] if cell == "gru" else states[1:, 0]
    assert ref.rel_err(h.detach().numpy(), hs) <= 1e-12
    assert ref.rel_err(y.detach().numpy(), y_ours) <= 1e-12
    tm = torch.from_numpy(mask)
    total = _loss_terms(y, torch.from_numpy(targets), tm, loss) / tm.sum()
    total.backward()
    value, grads, state_last = gated.loss_and_gradients(params, x, targets, mask, "full", cell=cell, loss=loss, h0=h0)
    assert abs(value - total.item()) <= 1e-12 * abs(total.item())
    assert ref.rel_err(state_last, last.detach().numpy()) <= 1e-12
    want = model.grads()
    for k in rg.KEYS:
        assert ref.rel_err(grads[k], want[k]) <= 1e-10, f"{cell} {loss}: {k}"


@pytest.mark.parametrize("mode", ("k_truncated:2", "subsequence:3", "tbptt:2:5", "tbptt:3:3"))
@pytest.mark.parametrize("cell", CELLS)
def test_truncated_gradients_agree_with_autograd_detach(cell, mode):
    """Autograd's truncated gradient: for each window start f, the module re-run from the
    state before f, detached (h and c), over the steps whose losses start there."""
    T, B, I, H, O = 10, 2, 3, 4, 3
    loss = "cross_entropy"
    params, x, targets, mask, h0 = rg.random_problem(np.random.default_rng(12), cell, T, B, I, H, O, loss,
                                                     with_h0=True)
    model = TorchModel(cell, params)
    tx, tt, tm = torch.from_numpy(x), torch.from_numpy(targets), torch.from_numpy(mask)
    with torch.no_grad():
        states = [torch.from_numpy(h0)]
        for t in range(T):
            states.append(model.run(tx[t : t + 1], states[-1])[1])
    starts = parse(mode).starts(T).tolist()
    total = 0.0
    for f in sorted(set(starts)):
        last = max(t for t in range(T) if starts[t] == f)
        keep = torch.tensor([starts[t] == f for t in range(f, last + 1)], dtype=torch.float64)[:, None]
        h, _ = model.run(tx[f : last + 1], states[f].detach())  # the whole state before f(t) is a constant
        total = total + _loss_terms(model.out(h), tt[f : last + 1], tm[f : last + 1] * keep, loss)
    (total / tm.sum()).backward()
    _, grads, _ = gated.loss_and_gradients(params, x, targets, mask, mode, cell=cell, loss=loss, h0=h0)
    want = model.grads()
    for k in rg.KEYS:
        assert ref.rel_err(grads[k], want[k]) <= 1e-10, f"{cell} {mode}: {k}"
