"""Optimizers with PyTorch's update conventions, over one flat buffer, with state that round-trips.

    sgd      v <- mu v + g;  p <- p - lr v          (nesterov: p <- p - lr (g + mu v))
    adagrad  G <- G + g^2;   p <- p - lr g / (sqrt(G) + eps)
    rmsprop  s <- alpha s + (1 - alpha) g^2;  p <- p - lr g / (sqrt(s) + eps)
    adam     m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
             p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

With ``eps_inside_sqrt=True`` the adaptive three divide by sqrt(acc + eps) instead of
sqrt(acc) + eps (min-char-rnn's Adagrad: ``dparam / np.sqrt(mem + 1e-8)``). The two differ
most while acc is tiny: at acc = 0 the step is g / sqrt(eps) against g / eps, so early
updates of rarely-seen weights are 1e4 times smaller with eps = 1e-8 inside. The state
slots are the same either way, so checkpoints of both forms load into each other.

Storage
-------
An update touches every entry of every parameter the same way, so it runs over one
contiguous buffer per dtype instead of one array per parameter (:class:`Flat`):

    buffer (n,)   [ W_xh (H*I) | W_hh (H*H) | b_h (H) | W_hy (O*H) | b_y (O) ]
    arrays[k]     a view of k's slice, shaped like the parameter

The trainer keeps its parameters as such views (:func:`flatten`) and copies each gradient
into a :class:`Flat` of the same layout. The optimizer's state slots (Adam's m and v, ...)
and two scratch buffers have that layout too, so ``step`` is a handful of in-place NumPy
calls over n entries and allocates nothing. It takes any dict of arrays: gradients that are
not views of a flat buffer are copied into one, parameters that are not are copied in and
back out (the same numbers, only slower).

Each update is the formula above evaluated in the same order of operations, in the
parameters' dtype, as the per-parameter form it replaced, so the numbers are bit for bit
the same. ``step`` updates the parameter arrays in place. ``state_dict()`` gives flat keys
such as ``"m/W_hh"`` and ``"t"`` (the checkpoint format); loading it into a fresh optimizer
continues bit for bit.
"""

from __future__ import annotations

import inspect

import numpy as np

from bptt_cli.core.errors import InvalidInputError


class Flat:
    """Named arrays stored as views into one contiguous buffer per dtype, in key order.

    ``Flat(like)`` allocates zeros laid out like the dict ``like``; ``Flat.of(arrays)``
    recognises arrays that already are such views (None otherwise). ``arrays`` is the plain
    dict of views; ``groups`` lists, per dtype, the buffer and each key's [start, stop).
    """

    def __init__(self, like: dict[str, np.ndarray], buffers: list[np.ndarray] | None = None) -> None:
        self.layout = _layout(like)
        spans = _spans(self.layout)
        if buffers is None:
            buffers = [np.zeros(g[-1][2], dtype=dt) for dt, g in spans]
        self.groups: list[tuple[np.ndarray, list[tuple[str, int, int]]]] = [(b, g) for b, (_, g) in zip(buffers, spans)]
        shapes = {k: shape for k, shape, _ in self.layout}
        views = {k: buf[a:b].reshape(shapes[k]) for buf, g in self.groups for k, a, b in g}
        self.arrays: dict[str, np.ndarray] = {k: views[k] for k in shapes}
        self._scratch: dict[tuple, list[np.ndarray]] = {}

    @classmethod
    def of(cls, arrays: dict) -> Flat | None:
        """A Flat over the buffers ``arrays`` already are views of (keeping the caller's view
        objects), or None unless they tile one contiguous buffer per dtype in key order."""
        try:
            spans = _spans(_layout(arrays))
        except AttributeError:
            return None
        buffers = []
        for _, group in spans:
            buf = arrays[group[0][0]].base
            if not isinstance(buf, np.ndarray) or buf.ndim != 1 or not buf.flags.c_contiguous or buf.size != group[-1][2]:
                return None
            origin = buf.__array_interface__["data"][0]
            for k, a, _ in group:
                v = arrays[k]
                if v.base is not buf or not v.flags.c_contiguous or v.__array_interface__["data"][0] != origin + a * buf.itemsize:
                    return None
            buffers.append(buf)
        flat = cls(arrays, buffers)
        flat.arrays = dict(arrays)
        return flat

    def holds(self, arrays: dict) -> bool:
        """Whether the values of ``arrays`` are this Flat's own view objects, in order."""
        return len(arrays) == len(self.arrays) and all(a is b for a, b in zip(arrays.values(), self.arrays.values()))

    def assign(self, arrays: dict) -> None:
        """Copy the values of ``arrays`` (the same keys and shapes) into the views."""
        for k, v in self.arrays.items():
            np.copyto(v, arrays[k])

    def scratch(self, name: str, dtype=None) -> list[np.ndarray]:
        """One work buffer per group, of the group's size (and dtype unless given), kept for reuse."""
        key = (name, None if dtype is None else np.dtype(dtype))
        bufs = self._scratch.get(key)
        if bufs is None:
            bufs = self._scratch[key] = [np.empty(buf.size, dtype=dtype or buf.dtype) for buf, _ in self.groups]
        return bufs


def flatten(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``arrays`` whose values are views into one contiguous buffer per dtype."""
    flat = Flat(arrays)
    flat.assign(arrays)
    return flat.arrays


def _layout(arrays: dict) -> tuple[tuple[str, tuple, np.dtype], ...]:
    """(key, shape, dtype) of each array, in key order."""
    return tuple((k, tuple(a.shape), np.dtype(a.dtype)) for k, a in arrays.items())


def _spans(layout) -> list[tuple[np.dtype, list[tuple[str, int, int]]]]:
    """Per dtype (in order of first appearance), each key's [start, stop) in that dtype's buffer."""
    spans: dict[np.dtype, list[tuple[str, int, int]]] = {}
    for k, shape, dt in layout:
        group = spans.setdefault(dt, [])
        start = group[-1][2] if group else 0
        group.append((k, start, start + int(np.prod(shape, dtype=np.int64))))
    return list(spans.items())


class Optimizer:
    name = ""
    slots: tuple[str, ...] = ()  # per-parameter state arrays

    def __init__(self, lr: float) -> None:
        _positive("lr", lr)
        self.lr = float(lr)
        self.t = 0
        self._loaded: dict[str, np.ndarray] = {}  # slot arrays from load_state_dict, until the next step
        self._layout: tuple | None = None  # the parameters' layout once the state is built
        self._state: dict[str, Flat] = {}  # slot -> its flat buffers
        self._params: Flat | None = None  # the parameters' own buffers, or a copy-in/copy-out Flat
        self._params_own = False
        self._grads: Flat | None = None  # the gradients' own buffers, or a Flat they are copied into
        self._grads_own = False

    def active_slots(self) -> tuple[str, ...]:
        """The slots this configuration uses (plain SGD keeps no velocity)."""
        return self.slots

    def step(self, params: dict, grads: dict) -> None:
        """Update ``params`` in place from ``grads`` (a dict with the same keys and shapes)."""
        if params.keys() != grads.keys():
            raise InvalidInputError(f"gradients must have the parameters' keys {', '.join(params)}, got {', '.join(grads)}")
        p = self._bind_params(params)
        g = self._bind_grads(grads)
        self.t += 1
        s1, s2 = p.scratch("s1"), p.scratch("s2")
        for i, (buf, _) in enumerate(p.groups):
            self._update(buf, g.groups[i][0], {s: f.groups[i][0] for s, f in self._state.items()}, s1[i], s2[i])
        if not self._params_own:
            for k, v in params.items():
                np.copyto(v, p.arrays[k])

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict, s1: np.ndarray, s2: np.ndarray) -> None:  # pragma: no cover
        """One update of the flat buffer p (n,) from g (n,); the state slots and s1, s2 are (n,) too."""
        raise NotImplementedError

    def _bind_params(self, params: dict) -> Flat:
        p = self._params
        if p is not None and self._params_own and p.holds(params):
            return p  # the trainer's parameters: the same views every step
        layout = _layout(params)
        if self._layout is None:
            self._make_state(params)
        elif layout != self._layout:
            raise InvalidInputError(
                "parameters do not match the optimizer's state, built for "
                + ", ".join(f"{k} {s} {d}" for k, s, d in self._layout)
            )
        if p is None or self._params_own or p.layout != layout:
            own = Flat.of(params)
            self._params_own = own is not None
            p = self._params = own if own is not None else Flat(params)
        if not self._params_own:
            p.assign(params)
        return p

    def _bind_grads(self, grads: dict) -> Flat:
        g = self._grads
        if g is not None and self._grads_own and g.holds(grads):
            return g  # the trainer's gradient buffer: the same views every step
        own = Flat.of(grads)
        if own is not None and own.layout == self._layout:
            self._grads, self._grads_own = own, True
            return own
        if g is None or self._grads_own:
            g = self._grads = Flat(self._params.arrays)
            self._grads_own = False
        for k, v in g.arrays.items():
            if np.shape(grads[k]) != v.shape:
                raise InvalidInputError(f"gradient {k} has shape {np.shape(grads[k])}, the parameter {v.shape}")
        g.assign(grads)
        return g

    def _make_state(self, params: dict) -> None:
        """Zero slots laid out like ``params``, filled from a loaded state where one was given."""
        for key in self._loaded:
            slot, _, name = key.partition("/")
            if slot not in self.active_slots() or name not in params:
                raise InvalidInputError(
                    f"optimizer state key {key!r} does not belong to this {self.name} over {', '.join(params)}"
                )
        state = {}
        for slot in self.active_slots():
            f = state[slot] = Flat(params)
            for k, v in f.arrays.items():
                a = self._loaded.get(f"{slot}/{k}")
                if a is None:
                    continue
                if a.shape != v.shape or a.dtype != v.dtype:
                    raise InvalidInputError(
                        f"optimizer state {slot}/{k} has shape {a.shape} and dtype {a.dtype}; "
                        f"the parameter has {v.shape} and {v.dtype}"
                    )
                v[...] = a
        self._state, self._layout, self._loaded = state, _layout(params), {}

    def hyper(self) -> dict:
        """The constructor's arguments; eps_inside_sqrt only when true, like the config's."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names if n != "eps_inside_sqrt" or self.eps_inside_sqrt}

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"t": ..., "slot/param": ...}``, copies (a snapshot the optimizer never changes)."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        out.update({k: a.copy() for k, a in self._loaded.items()})
        for slot, f in self._state.items():
            out.update({f"{slot}/{k}": a.copy() for k, a in f.arrays.items()})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; its slot arrays are checked against the parameters at the next step."""
        if "t" not in state:
            raise InvalidInputError("optimizer state has no step counter 't'")
        t = np.asarray(state["t"])
        if t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
            raise InvalidInputError(f"optimizer step counter 't' must be an integer >= 0, got {state['t']!r}")
        loaded = {}
        for key, a in state.items():
            if key == "t":
                continue
            slot, _, name = key.partition("/")
            if slot not in self.slots or not name:
                raise InvalidInputError(f"optimizer state key {key!r} does not belong to {self.name}")
            loaded[key] = np.array(a, copy=True)
        self.t = int(t)
        self._loaded, self._layout, self._state = loaded, None, {}
        self._params = self._grads = None


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

    def active_slots(self) -> tuple[str, ...]:
        return self.slots if self.momentum else ()

    def _update(self, p, g, state, s1, s2):
        f = p.dtype.type
        if self.momentum == 0:
            np.multiply(g, f(self.lr), out=s1)  # lr g
        else:
            v = state["v"]
            v *= f(self.momentum)
            v += g
            if self.nesterov:
                np.multiply(v, f(self.momentum), out=s1)
                np.add(g, s1, out=s1)  # g + mu v
                s1 *= f(self.lr)
            else:
                np.multiply(v, f(self.lr), out=s1)
        p -= s1


class Adagrad(Optimizer):
    name = "adagrad"
    slots = ("G",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, eps_inside_sqrt: bool = False) -> None:
        super().__init__(lr)
        _positive("eps", eps)
        self.eps, self.eps_inside_sqrt = float(eps), _flag("eps_inside_sqrt", eps_inside_sqrt)

    def _update(self, p, g, state, s1, s2):
        f, G = p.dtype.type, state["G"]
        np.multiply(g, g, out=s1)
        G += s1
        _scaled_step(p, g, G, f(self.lr), f(self.eps), s1, s2, self.eps_inside_sqrt)


class RMSprop(Optimizer):
    name = "rmsprop"
    slots = ("s",)

    def __init__(self, lr: float = 0.001, alpha: float = 0.99, eps: float = 1e-8, eps_inside_sqrt: bool = False) -> None:
        super().__init__(lr)
        if not 0 <= alpha < 1:
            raise InvalidInputError(f"rmsprop alpha must be in [0, 1), got {alpha!r}")
        _positive("eps", eps)
        self.alpha, self.eps = float(alpha), float(eps)
        self.eps_inside_sqrt = _flag("eps_inside_sqrt", eps_inside_sqrt)

    def _update(self, p, g, state, s1, s2):
        f, s = p.dtype.type, state["s"]
        s *= f(self.alpha)
        np.multiply(g, f(1 - self.alpha), out=s1)
        s1 *= g  # ((1 - alpha) g) g, in that order
        s += s1
        _scaled_step(p, g, s, f(self.lr), f(self.eps), s1, s2, self.eps_inside_sqrt)


class Adam(Optimizer):
    name = "adam"
    slots = ("m", "v")

    def __init__(
        self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, eps_inside_sqrt: bool = False
    ) -> None:
        super().__init__(lr)
        for n, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise InvalidInputError(f"adam {n} must be in [0, 1), got {b!r}")
        _positive("eps", eps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.eps_inside_sqrt = _flag("eps_inside_sqrt", eps_inside_sqrt)

    def _update(self, p, g, state, s1, s2):
        f, m, v = p.dtype.type, state["m"], state["v"]
        m *= f(self.beta1)
        np.multiply(g, f(1 - self.beta1), out=s1)
        m += s1
        v *= f(self.beta2)
        np.multiply(g, f(1 - self.beta2), out=s1)
        s1 *= g
        v += s1
        c1 = 1 - self.beta1**self.t
        c2 = 1 - self.beta2**self.t
        np.multiply(m, f(self.lr / c1), out=s1)  # lr m_hat
        np.divide(v, f(c2), out=s2)  # v_hat
        if self.eps_inside_sqrt:
            s2 += f(self.eps)
            np.sqrt(s2, out=s2)
        else:
            np.sqrt(s2, out=s2)
            s2 += f(self.eps)
        s1 /= s2
        p -= s1


def _scaled_step(p, g, acc, lr, eps, s1, s2, inside: bool = False) -> None:
    """p <- p - lr g / (sqrt(acc) + eps), or / sqrt(acc + eps) when ``inside``, through the
    scratch s1, s2 (adagrad, rmsprop)."""
    np.multiply(g, lr, out=s1)
    if inside:
        np.add(acc, eps, out=s2)
        np.sqrt(s2, out=s2)
    else:
        np.sqrt(acc, out=s2)
        s2 += eps
    s1 /= s2
    p -= s1


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


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive number, got {value!r}")
