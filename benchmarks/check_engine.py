"""Brute-force check of ``loss_and_gradients`` for every truncation mode (run after any engine change).

    python benchmarks/check_engine.py            # 400 random trials, float64, rel err < 1e-9
    python benchmarks/check_engine.py --trials 50

Also ``chunked_pass`` (``update_every: chunk``) without updates: its per-chunk gradients,
weighted by each chunk's supervised entries, must add up to the same reference gradient.
Independent of the engine's vectorisation: the gradients come from the definitional
reference of ``bptt_cli.core.gradcheck`` (for each loss step t, re-run f(t) .. t from a
constant h_{f(t)-1} and backpropagate L_t alone, per-step outer products), the loss and
h_last from a plain step-by-step forward. Compared with the engine for all five gradients,
every mode (full,
k_truncated:K, subsequence:K, tbptt:K1:K2 including K1 == K2), all activations and both
losses, on random T in 1..15, B, masks and h0. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from bptt_cli.core import bptt
from bptt_cli.core.bptt import Workspace, loss_and_gradients
from bptt_cli.core.gradcheck import reference_gradients

KEYS = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")
GROUP_BYTES, BLOCK_BYTES, SPAN_BYTES = bptt._GROUP_BYTES, bptt._BLOCK_BYTES, bptt._SPAN_BYTES


def brute(params, x, targets, mask, spec, act, loss, h0):
    """(loss, gradients, h_last) the plain way: a step-by-step forward and softmax/mse for the
    loss and h_last, and the package's definitional reference for the gradients (one re-run
    and one backward chain per loss step, per-step outer products; gradcheck.py)."""
    T, B, _ = x.shape
    h = h0
    total = 0.0
    n = mask.sum()
    phi = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0.0), "identity": lambda v: v}[act]
    for t in range(T):
        h = phi(x[t] @ params["W_xh"].T + h @ params["W_hh"].T + params["b_h"])
        y = h @ params["W_hy"].T + params["b_y"]  # (B, O)
        if loss == "cross_entropy":
            z = y - y.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            total += -(mask[t] * logp[np.arange(B), targets[t]]).sum() / n
        else:
            d = y - targets[t]
            total += 0.5 * (mask[t][:, None] * d * d).sum() / n
    grads = reference_gradients(params, x, targets, mask, spec, act, loss, h0)
    return total, grads, h


def random_spec(rng, T):
    mode = rng.choice(["full", "k_truncated", "subsequence", "tbptt", "tbptt_eq"])
    if mode == "full":
        return "full"
    if mode == "k_truncated":
        return f"k_truncated:{rng.integers(0, T + 2)}"
    if mode == "subsequence":
        return f"subsequence:{rng.integers(1, T + 2)}"
    k1 = int(rng.integers(1, T + 2))
    k2 = k1 if mode == "tbptt_eq" else int(rng.integers(k1, T + 4))
    return f"tbptt:{k1}:{k2}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    ws = Workspace()  # shared on purpose: buffer reuse across shapes must not leak
    worst = 0.0
    fails = 0
    for trial in range(args.trials):
        T = int(rng.integers(1, 16))
        B = int(rng.integers(1, 5))
        I, H, O = (int(v) for v in rng.integers(1, 7, size=3))
        act = str(rng.choice(["tanh", "relu", "identity"]))
        loss = str(rng.choice(["cross_entropy", "mse"]))
        spec = random_spec(rng, T)
        scale = 0.6 if act == "identity" else 1.0
        params = {
            "W_xh": rng.standard_normal((H, I)),
            "W_hh": rng.standard_normal((H, H)) * scale / np.sqrt(H),
            "b_h": rng.standard_normal(H) * 0.1,
            "W_hy": rng.standard_normal((O, H)),
            "b_y": rng.standard_normal(O) * 0.1,
        }
        x = rng.standard_normal((T, B, I))
        mask = (rng.random((T, B)) < rng.uniform(0.2, 1.0)).astype(np.float64)
        mask[rng.integers(T), rng.integers(B)] = 1.0
        targets = rng.integers(0, O, size=(T, B)) if loss == "cross_entropy" else rng.standard_normal((T, B, O))
        h0 = rng.standard_normal((B, H)) * 0.5 if rng.random() < 0.5 else None
        # Small chain groups in the lag sweep half of the time, so the grouping is exercised.
        bptt._GROUP_BYTES = GROUP_BYTES if rng.random() < 0.5 else B * H * 8 * int(rng.integers(1, 4))
        # The same for the blocks of steps of the forward pass and the backward chain.
        bptt._BLOCK_BYTES = BLOCK_BYTES if rng.random() < 0.5 else B * H * 8 * int(rng.integers(1, 5))
        # And the spans of the lag sweep: short spans make several, with carries between them.
        bptt._SPAN_BYTES = SPAN_BYTES if rng.random() < 0.5 else B * H * 8 * int(rng.integers(1, 6))
        v, g, hl = loss_and_gradients(
            params, x, targets, mask, spec, activation=act, loss=loss, h0=h0, workspace=ws
        )
        g_keep = {k: a.copy() for k, a in g.items()}
        vr, gr, hlr = brute(params, x, targets, mask, spec, act, loss, np.zeros((B, H)) if h0 is None else h0)
        errs = {}
        for k in KEYS:
            den = max(np.abs(gr[k]).max(), 1e-12)
            errs[k] = np.abs(g[k] - gr[k]).max() / den
        errs["loss"] = abs(v - vr) / max(abs(vr), 1e-12)
        errs["h_last"] = np.abs(hl - hlr).max() / max(np.abs(hlr).max(), 1e-12)
        e = max(errs.values())
        worst = max(worst, e)
        if e > 1e-9:
            fails += 1
            bad = {k: f"{val:.1e}" for k, val in errs.items() if val > 1e-9}
            print(f"FAIL trial {trial}: T={T} B={B} I={I} H={H} O={O} {spec} {act} {loss}: {bad}")
        # chunked_pass without updates: its chunk gradients, weighted by each chunk's supervised
        # entries, add up to the sequence's gradient (the chunk losses are chunk means).
        chunks = []
        bptt.chunked_pass(params, x, targets, mask, spec, lambda i, L, gc, chunks=chunks: chunks.append((i, L, gc)),
                          activation=act, loss=loss, h0=h0, workspace=ws)
        C = bptt.parse(spec).chunk_length(T)
        weight = {i: mask[i * C : (i + 1) * C].sum() / mask.sum() for i, _, _ in chunks}
        for k in KEYS:
            summed = sum(weight[i] * gc[k] for i, _, gc in chunks)
            e_chunk = np.abs(summed - gr[k]).max() / max(np.abs(gr[k]).max(), 1e-12)
            worst = max(worst, e_chunk)
            if e_chunk > 1e-9:
                fails += 1
                print(f"FAIL trial {trial}: chunked_pass {spec} {act} {loss}: sum of chunk grads {k} off by {e_chunk:.1e}")
        # A later call must not overwrite the gradients returned earlier.
        loss_and_gradients(params, x * 0.5, targets, mask, spec, activation=act, loss=loss, workspace=ws)
        for k in KEYS:
            if not np.array_equal(g[k], g_keep[k]):
                fails += 1
                print(f"FAIL trial {trial}: grads[{k!r}] changed by a later call")
    print(f"{args.trials} trials, {fails} failures, worst relative error {worst:.2e}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
