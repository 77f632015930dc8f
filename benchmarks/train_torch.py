#!/usr/bin/env python3
"""PyTorch's side of t2_bench_train: forward+backward tokens/s of a Llama at the tinyllamas
shapes in float32 on the CPU, with the same workloads as t2:

  svf-z  SVF on the selected matrices, z the only trainable tensor; W' = U diag(σ⊙z) Vᵀ is
         composed in the graph every step, as the Transformer² reference code does
  full   every weight trainable

Prints "tokens_per_second X" (the median of --repeat steps after a warm-up step).
"""
import argparse
import math
import os
import re
import statistics
import sys
import time


def thread_count():
    """--threads, read before torch loads: its BLAS sizes its own thread pool at load time."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


# Debian's torch does its matrix products in OpenBLAS (BLAS_INFO=generic), whose threads
# torch.set_num_threads does not bound: without this, "one thread" uses every core.
os.environ["OPENBLAS_NUM_THREADS"] = thread_count()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHAPES = {"stories15M": (288, 768, 6, 6), "stories42M": (512, 1376, 8, 8), "stories110M": (768, 2048, 12, 12)}
VOCAB = 32000


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):  # x [T, H, hd], interleaved pairs as llama2.c
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="stories15M", choices=sorted(SHAPES))
    p.add_argument("--mode", default="svf-z", choices=["svf-z", "full"])
    p.add_argument("--threads", type=int, default=1, help="cores: OpenBLAS's threads")
    p.add_argument("--intra-op-threads", type=int, default=1,
                   help="torch.set_num_threads; 1 is PyTorch's fastest setting here on 1 and 2 cores "
                        "(2 intra-op threads beside 2 OpenBLAS threads measured 3x slower)")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--matrices", default="mlp", help="mlp, attn, all or a regex over layers.L.attention.wq-style names")
    args = p.parse_args()
    torch.set_num_threads(args.intra_op_threads)
    torch.manual_seed(0)

    dim, hidden, layers, heads = SHAPES[args.model]
    hd = dim // heads
    full = args.mode == "full"

    def matrix(out, inp):
        return ((torch.rand(out, inp) * 2 - 1) / math.sqrt(inp)).requires_grad_(full)

    names = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
             "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward"}

    def selected(name):
        kind = name.split(".")[2]
        if args.matrices == "mlp":
            return kind == "feed_forward"
        if args.matrices in ("attn", "attention"):
            return kind == "attention"
        return args.matrices == "all" or re.fullmatch(args.matrices, name) is not None

    emb = matrix(VOCAB, dim)
    blocks = []
    for layer in range(layers):
        shapes = {"wq": (dim, dim), "wk": (dim, dim), "wv": (dim, dim), "wo": (dim, dim),
                  "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim)}
        b = {"attention_norm": torch.ones(dim).requires_grad_(full), "mlp_norm": torch.ones(dim).requires_grad_(full)}
        for short, shape in shapes.items():
            w = matrix(*shape)
            name = f"layers.{layer}.{names[short]}.{short}"
            if not full and selected(name):
                u, s, vh = torch.linalg.svd(w.detach(), full_matrices=False)
                b[short] = ("svf", u, s, vh.T.contiguous(), torch.ones_like(s).requires_grad_(True))
            else:
                b[short] = ("dense", w)
        blocks.append(b)
    final_norm = torch.ones(dim).requires_grad_(full)

    T = args.tokens
    tokens = torch.tensor([(i * 7919 + 1) % VOCAB for i in range(T + 1)])
    inputs, targets = tokens[:-1], tokens[1:].clone()
    targets[: T // 4] = -100  # the prompt: not counted
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(T).float(), freqs)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    causal = torch.full((T, T), float("-inf")).triu(1)

    def weight(entry):
        if entry[0] == "dense":
            return entry[1]
        _, u, s, v, z = entry
        return (u * (s * z)) @ v.T

    def step():
        x = emb[inputs]
        for b in blocks:
            h = rmsnorm(x, b["attention_norm"])
            q = (h @ weight(b["wq"]).T).view(T, heads, hd)
            k = (h @ weight(b["wk"]).T).view(T, heads, hd)
            v = (h @ weight(b["wv"]).T).view(T, heads, hd)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            scores = q.transpose(0, 1) @ k.permute(1, 2, 0) / math.sqrt(hd) + causal
            att = torch.softmax(scores, -1) @ v.transpose(0, 1)
            x = x + att.transpose(0, 1).reshape(T, dim) @ weight(b["wo"]).T
            h = rmsnorm(x, b["mlp_norm"])
            x = x + (F.silu(h @ weight(b["w1"]).T) * (h @ weight(b["w3"]).T)) @ weight(b["w2"]).T
        logits = rmsnorm(x, final_norm) @ emb.T
        loss = F.cross_entropy(logits, targets, ignore_index=-100)
        loss.backward()
        return loss

    rates = []
    for r in range(args.repeat + 1):
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        if r > 0:
            rates.append(T / seconds)
    print(f"tokens_per_second {statistics.median(rates):.3f}")


if __name__ == "__main__":
    main()
