"""Optimizers with PyTorch's update conventions and state that round-trips through a dict of arrays.

    sgd      v <- mu v + g;  p <- p - lr v          (nesterov: p <- p - lr (g + mu v))
    adagrad  G <- G + g^2;   p <- p - lr g / (sqrt(G) + eps)
    rmsprop  s <- alpha s + (1 - alpha) g^2;  p <- p - lr g / (sqrt(s) + eps)
    adam     m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
             p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

``step`` updates the parameter arrays in place. ``state_dict()`` gives flat keys such as
``"m/W_hh"`` and ``"t"``; loading it into a fresh optimizer continues bit for bit.
"""

from __future__ import annotations

import inspect

import numpy as np

from bptt_cli.core.errors import InvalidInputError


class Optimizer:
    name = ""
    slots: tuple[str, ...] = ()  # per-parameter state arrays

    def __init__(self, lr: float) -> None:
        _positive("lr", lr)
        self.lr = float(lr)
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}

    def _slot(self, slot: str, key: str, like: np.ndarray) -> np.ndarray:
        buf = self.state[slot].get(key)
        if buf is None:
            buf = self.state[slot][key] = np.zeros_like(like)
        return buf

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for k, g in grads.items():
            self._update(k, params[k], g)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def hyper(self) -> dict:
        return {n: getattr(self, n) for n in inspect.signature(type(self).__init__).parameters if n != "self"}

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t, dtype=np.int64)}
        for slot, arrays in self.state.items():
            for k, a in arrays.items():
                out[f"{slot}/{k}"] = a.copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        if "t" not in state:
            raise InvalidInputError("optimizer state has no step counter 't'")
        self.t = int(state["t"])
        self.state = {s: {} for s in self.slots}
        for key, a in state.items():
            if key == "t":
                continue
            slot, _, name = key.partition("/")
            if slot not in self.state or not name:
                raise InvalidInputError(f"optimizer state key {key!r} does not belong to {self.name}")
            self.state[slot][name] = np.array(a, copy=True)


class SGD(Optimizer):
    name = "sgd"
    slots = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise InvalidInputError(f"sgd momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise InvalidInputError("sgd nesterov needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _update(self, key, p, g):
        if self.momentum == 0:
            p -= p.dtype.type(self.lr) * g
            return
        v = self._slot("v", key, p)
        v *= v.dtype.type(self.momentum)
        v += g
        step = g + v.dtype.type(self.momentum) * v if self.nesterov else v
        p -= p.dtype.type(self.lr) * step


class Adagrad(Optimizer):
    name = "adagrad"
    slots = ("G",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-10) -> None:
        super().__init__(lr)
        _positive("eps", eps)
        self.eps = float(eps)

    def _update(self, key, p, g):
        G = self._slot("G", key, p)
        G += g * g
        p -= p.dtype.type(self.lr) * g / (np.sqrt(G) + p.dtype.type(self.eps))


class RMSprop(Optimizer):
    name = "rmsprop"
    slots = ("s",)

    def __init__(self, lr: float = 0.001, alpha: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__(lr)
        if not 0 <= alpha < 1:
            raise InvalidInputError(f"rmsprop alpha must be in [0, 1), got {alpha!r}")
        _positive("eps", eps)
        self.alpha, self.eps = float(alpha), float(eps)

    def _update(self, key, p, g):
        s = self._slot("s", key, p)
        s *= s.dtype.type(self.alpha)
        s += s.dtype.type(1 - self.alpha) * g * g
        p -= p.dtype.type(self.lr) * g / (np.sqrt(s) + p.dtype.type(self.eps))


class Adam(Optimizer):
    name = "adam"
    slots = ("m", "v")

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(lr)
        for n, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise InvalidInputError(f"adam {n} must be in [0, 1), got {b!r}")
        _positive("eps", eps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, key, p, g):
        m, v = self._slot("m", key, p), self._slot("v", key, p)
        f = p.dtype.type
        m *= f(self.beta1)
        m += f(1 - self.beta1) * g
        v *= f(self.beta2)
        v += f(1 - self.beta2) * g * g
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        p -= f(self.lr / c1) * m / (np.sqrt(v / f(c2)) + f(self.eps))


OPTIMIZERS: dict[str, type[Optimizer]] = {c.name: c for c in (SGD, Adagrad, RMSprop, Adam)}


def make(name: str, **hyper) -> Optimizer:
    """An optimizer by name with its hyperparameters, e.g. ``make("adam", lr=1e-3)``."""
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise InvalidInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    allowed = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    unknown = [k for k in hyper if k not in allowed]
    if unknown:
        raise InvalidInputError(f"{name} has no hyperparameter {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return cls(**hyper)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
