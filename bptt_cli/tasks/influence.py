r"""``influence`` (influence balancing, after Tallec & Ollivier 2017): a parameter that helps the
loss in the short term and hurts it in the long term, so short windows get its gradient's sign wrong.

The paper's system is a linear recurrence driven by one scalar parameter theta,

    s_t = A s_{t-1} + theta * v,    v = (+1, .. +1, -1, .. -1)   (p plus signs, n - p minus)
    A   = lambda I + c N            N: ones just above the diagonal (unit i+1 feeds unit i)
    loss_t = 0.5 (s_t[0] - 1)^2     on every step

Unit k (0-based) reaches the read-out unit 0 only through k steps of N, so theta's effect on
s_t[0] after j steps is theta * sum_k v_k C(j, k) c^k lambda^(j-k): the first p units push it
up within a few steps, the last n - p pull it down later. In the steady state
s[0] = theta * sum_k v_k c^k / (1 - lambda)^(k+1): with the defaults (c = 1 - lambda = 0.5)
every unit weighs 2, so s[0] = 2 theta (2p - n) = -4 theta for n = 10, p = 4, and the loss
wants theta < 0; at theta = 0 with T = 50, k_truncated:K with K <= 15 sees mostly the
short-term, positive effect and pushes theta up, away from the optimum (K >= 20 and full
get the sign right).

Mapped onto bptt's Elman RNN with the identity activation: h_t = W_hh h_{t-1} + W_xh x_t + b_h,
y_t = W_hy h_t + b_y with x_t = 1 (+ noise), W_hh = A, W_xh = theta * v (H = n, I = 1), b_h = 0,
W_hy = e_0^T, b_y = 0, target 1, mse loss on every step. ``initial_params`` builds that
network at theta = ``theta``; ``project_gradient`` keeps only the theta direction (W_xh's
gradient becomes (dL/dtheta) v, every other gradient 0), so an optimizer step moves theta
alone and the network stays the paper's system. The trainer calls both when a task has them.

Differences from the paper, all knobs: the coupling c above the diagonal (the paper's A is
a Jordan block, c = 1, whose steady influences grow as 2^k and need tiny learning rates;
``coupling: 1`` gives it); sequences of ``length`` steps from a zero state instead of one
endless stream, the state not carried across batches (T = 50 by default, long enough for
the full gradient to see the long-term sign); the input is 1 + ``noise`` * N(0, 1) rather
than the paper's constant 1, so that batches differ from step to step as every task's do
(``noise: 0`` gives the constant input; the default 0.1 leaves the signs above unchanged).
The paper's own sizes and constants are not copied here (its text could not be consulted
while this was written); the defaults are chosen so that the trade-off shows at T = 50.
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, Batch, Param, Task, TaskError

MAX_UNITS = 1024


class InfluenceTask(Task):
    """x ``(T, B, 1)`` 1 + noise, targets ``(T, B, 1)`` ones, mask ``(T, B)`` ones; the model is fixed (see module)."""

    name = "influence"
    description = (
        "Influence balancing (Tallec & Ollivier 2017): one parameter helps the loss short-term and hurts "
        "it long-term; needs model.activation identity and model.hidden = units."
    )
    params = (
        Param("units", 10, "state size n (model.hidden must equal it)", int, low=2, high=MAX_UNITS),
        Param("positive", 4, "units p driven by +theta (short-term, helpful); the other n - p get -theta", int, low=1, high=MAX_UNITS - 1),
        Param("decay", 0.5, "lambda, the diagonal of A", float, low=0.0, high=0.99),
        Param("coupling", 0.5, "c, the entries just above A's diagonal (1 = the paper's Jordan block)", float, low=0.0, high=10.0),
        Param("theta", 0.0, "initial value of the parameter theta", float, low=-1000.0, high=1000.0),
        Param("noise", 0.1, "standard deviation of the input around 1 (0 = the paper's constant input)", float, low=0.0, high=10.0),
        Param("length", 50, "sequence length T", int, low=2, high=MAX_LENGTH),
    )
    loss = "mse"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)
        self.n_in = self.n_out = 1
        self.length = self.p["length"]

    @classmethod
    def _check_combination(cls, p) -> None:
        if p["positive"] >= p["units"]:
            raise TaskError(
                f"task 'influence' parameter 'positive' is {p['positive']} but must be < units ({p['units']}), "
                "or no unit pulls the other way",
                "positive",
            )

    # -- the fixed system ---------------------------------------------------------------
    def signs(self, dtype=np.float64) -> np.ndarray:
        """v (n,): +1 for the first ``positive`` units, -1 for the rest."""
        n, p = self.p["units"], self.p["positive"]
        return np.concatenate([np.ones(p), -np.ones(n - p)]).astype(dtype)

    def transition(self, dtype=np.float64) -> np.ndarray:
        """A (n, n) = lambda I + c N."""
        n = self.p["units"]
        return (self.p["decay"] * np.eye(n) + self.p["coupling"] * np.eye(n, k=1)).astype(dtype)

    def initial_params(self, hidden: int, activation: str, dtype) -> dict[str, np.ndarray]:
        """The Elman parameters of the system at theta = ``theta``; TaskError unless the model fits."""
        n = self.p["units"]
        if hidden != n:
            raise TaskError(f"task 'influence' needs model.hidden = units = {n}, got model.hidden = {hidden}", "units")
        if activation != "identity":
            raise TaskError(f"task 'influence' is a linear system: it needs model.activation identity, got {activation}", "units")
        dt = np.dtype(dtype)
        return {
            "W_xh": (self.p["theta"] * self.signs(dt))[:, None],  # (H, 1)
            "W_hh": self.transition(dt),  # (H, H)
            "b_h": np.zeros(n, dtype=dt),
            "W_hy": np.eye(1, n, dtype=dt),  # (1, H): reads unit 0
            "b_y": np.zeros(1, dtype=dt),
        }

    def theta(self, params: dict) -> float:
        """theta of a network built by ``initial_params`` (and moved by projected gradients)."""
        v = self.signs()
        return float(np.asarray(params["W_xh"], dtype=np.float64)[:, 0] @ v / (v @ v))

    def theta_gradient(self, grads: dict) -> float:
        """dL/dtheta = <dL/dW_xh, v> (W_xh = theta v)."""
        return float(np.asarray(grads["W_xh"], dtype=np.float64)[:, 0] @ self.signs())

    def project_gradient(self, grads: dict) -> dict:
        """Only theta moves: W_xh's gradient (dL/dtheta) v, every other one zero (fresh arrays)."""
        g = self.theta_gradient(grads)
        out = {k: np.zeros_like(v) for k, v in grads.items()}
        out["W_xh"][:, 0] = g * self.signs(out["W_xh"].dtype)
        return out

    def steady_gain(self) -> float:
        """d s[0] / d theta in the steady state: e_0^T (I - A)^{-1} v."""
        n = self.p["units"]
        return float(np.linalg.solve(np.eye(n) - self.transition(), self.signs())[0])

    # -- data ---------------------------------------------------------------------------
    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T = self.length
        x = 1.0 + self.p["noise"] * rng.standard_normal((T, batch_size, 1))  # (T, B, 1)
        x = x.astype(self.dtype)
        return Batch(x, np.ones((T, batch_size, 1), dtype=self.dtype), np.ones((T, batch_size), dtype=self.dtype))

    def metrics(self, y: np.ndarray, batch: Batch) -> dict[str, float]:
        """``final_error``: |y_{T-1} - 1|, how far the read-out ends from its target."""
        return {"final_error": float(np.abs(np.asarray(y[-1], dtype=np.float64) - 1.0).mean())}

    def chance(self) -> dict[str, float]:
        # The input is constant, so "input-blind" is every predictor; theta = 0 (y = 0) is the reference.
        return {"loss": 0.5}
