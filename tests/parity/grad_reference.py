#!/usr/bin/env python3
"""PyTorch autograd reference for t2's adapter gradients (tests/test_parity_grad.cpp).

For each case it builds the adapted weights of a llama2.c checkpoint in float64 torch from
their definitions, with requires_grad on the adapter parameters, runs a Llama forward (the
ops of llama_reference.py, on torch tensors) over each sequence from position 0, takes the
loss and calls backward. Nothing here uses t2's code; only its files are read.

  svf      W' = U diag(σ ⊙ z · c) Vᵀ,  c = Σσ / Σ(σ⊙z) with rescaling, else 1; the parameters
           are z, or θ with z = sigmoid(θ) (parametrization sigmoid)
  mixture  the same with z = Σ_k α_k z_k; α global [K] or per layer [n_layers × K], the
           experts z_k frozen (only α is a parameter)
  lora     W' = W + (alpha / rank) · B A,  A [rank × in], B [out × rank]

Rows: a sequence of N tokens gives N−1 rows, row t reading tokens[t] and predicting
tokens[t+1]; the rows of B sequences are stacked in order (t2's training_batch), R in all.
ce_r = −log softmax(logits_r)[target_r]. The loss is the sum of the terms named (nn/loss.hpp):
  cross_entropy  Σ_r mask_r·ce_r / Σ_r mask_r
  reinforce      (1/B)·Σ_b rewards_b·Σ_{r in b} mask_r·ce_r
  kl             kl_coefficient·Σ_r kl_weights_r·KL_r, with p = softmax of the BASE model's
                 logits (the checkpoint's own dense matrices, no adapter: what t2's adapted
                 model runs without an adapter, an SVF model's decomposed matrices included,
                 rather than U diag(σ) Vᵀ) and q = softmax of the adapted model's on row r:
                 KL_r = KL(p ‖ q) (base_to_adapted) or KL(q ‖ p) (adapted_to_base),
                 ops/kl_divergence.hpp's two directions.

A case is a directory holding case.txt (tab-separated "key value" lines):
  kind           svf | mixture | lora
  checkpoint     llama2.c file (read with llama_reference.read_llama2c)
  layout         interleaved | halves (the RoPE layout the model applies to q/k rows)
  tokens         comma-separated ids: one sequence; or
  sequences      a batch: sequences separated by ';', each comma-separated ids
  mask           comma-separated weights, one per row
  loss           comma-separated terms (default cross_entropy); with more than one term
                 each term's value and gradients are written as well, in out/<term>/
  rewards        comma-separated, one per sequence (reinforce)
  kl_coefficient, kl_direction (base_to_adapted | adapted_to_base), kl_weights (optional,
                 comma-separated, one per row; default all 1) (kl)
  decomposition  t2 decomposition file, safetensors: "<matrix>.U" [out×r], ".S" [r], ".V" [in×r]
                 (svf, mixture; every matrix it holds is adapted)
  rescale        0 | 1 (svf, mixture)
  parametrization z | sigmoid (svf; default z)
  matrices       comma-separated adapted matrix names (lora)
  lora_alpha, lora_rank
and the inputs as .npy in in/: svf "<matrix>.z.npy" [r], or "<matrix>.theta.npy" [r] with
the sigmoid parametrization; mixture "<matrix>.experts.npy" [K×r] (frozen) and "alpha.npy"
[K] or [n_layers×K]; lora "<matrix>.A.npy", "<matrix>.B.npy".
The script writes out/loss.npy [1] and out/<same name>.npy, the gradient of each parameter
(every input but the mixtures' experts), all float64.

Commands:
  grad_reference.py case DIR           one case
  grad_reference.py batch MANIFEST     every case directory listed (one a line, '#' comments)
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # exits 3 with a message when torch or numpy is missing

import numpy as np
import torch
import torch.nn.functional as F

f64 = torch.float64


def T(a):
    return torch.from_numpy(np.array(a, dtype=np.float64))


from case_spec import read_spec  # noqa: E402  (the script's directory is on sys.path)


def read_safetensors(path):
    """{name: float64 numpy array} of an F32 safetensors file."""
    data = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit("%s: %s is %s, expected F32" % (path, name, info["dtype"]))
        begin, end = info["data_offsets"]
        a = np.frombuffer(data[base + begin:base + end], dtype="<f4")
        out[name] = a.reshape(info["shape"]).astype(np.float64)
    return out


def parse_matrix(name):
    """"layers.3.attention.wq" → (3, "wq")."""
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "layers" or parts[2] not in ("attention", "feed_forward"):
        raise SystemExit("not a block matrix name: %r" % name)
    return int(parts[1]), parts[3]


def forward(cfg, w, tokens, layout):
    """Logits [T × vocab] of every position; w holds float64 torch tensors (some of them
    functions of parameters that require grad). The same model as llama_reference.forward."""
    D, nh, nkv = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    hd, eps, n = ref.head_dim(cfg), float(cfg["norm_eps"]), len(tokens)

    def rmsnorm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    i = torch.arange(hd // 2, dtype=f64)
    inv_freq = torch.pow(torch.tensor(float(cfg["rope_theta"]), dtype=f64), -2.0 * i / hd)
    angle = torch.arange(n, dtype=f64)[:, None] * inv_freq[None, :]
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]

    def rope(v):  # [T, heads, hd]
        if layout == "interleaved":
            a, b = v[..., 0::2], v[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        a, b = v[..., : hd // 2], v[..., hd // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

    causal = torch.full((n, n), float("-inf"), dtype=f64).triu(1)
    x = w["tok_embeddings"][torch.tensor(tokens, dtype=torch.long)]
    for L in w["layers"]:
        h = rmsnorm(x, L["attention_norm"])
        q = rope(F.linear(h, L["wq"]).view(n, nh, hd))
        k = rope(F.linear(h, L["wk"]).view(n, nkv, hd))
        v = F.linear(h, L["wv"]).view(n, nkv, hd)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        scores = q @ k.transpose(1, 2) / (hd ** 0.5) + causal
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(n, D)
        x = x + F.linear(attended, L["wo"])
        h = rmsnorm(x, L["ffn_norm"])
        x = x + F.linear(F.silu(F.linear(h, L["w1"])) * F.linear(h, L["w3"]), L["w2"])
    return F.linear(rmsnorm(x, w["norm"]), w["output"])


def svf_weight(U, S, V, z, rescale):
    s = S * z
    if rescale:
        s = s * (S.sum() / (S * z).sum())
    return (U * s) @ V.T


def run_case(directory):
    spec = read_spec(directory, {"parametrization": "z"})
    kind, layout = spec["kind"], spec["layout"]
    if layout not in ("interleaved", "halves"):
        raise SystemExit("%s: unknown layout %r" % (directory, layout))
    cfg, base = ref.read_llama2c(spec["checkpoint"])
    if "sequences" in spec:
        sequences = [[int(t) for t in seq.split(",")] for seq in spec["sequences"].split(";")]
    else:
        sequences = [[int(t) for t in spec["tokens"].split(",")]]
    rows = sum(len(seq) - 1 for seq in sequences)
    mask = T([float(m) for m in spec["mask"].split(",")])
    if len(mask) != rows:
        raise SystemExit("%s: %d mask weights for %d rows" % (directory, len(mask), rows))
    for seq in sequences:
        if len(seq) < 2:
            raise SystemExit("%s: a sequence of %d tokens has no row" % (directory, len(seq)))
        ref.check_tokens(cfg, seq[:-1])

    w = {"tok_embeddings": T(base["tok_embeddings"]), "norm": T(base["norm"]),
         "output": T(base["output"]),
         "layers": [{k: T(v) for k, v in L.items()} for L in base["layers"]]}
    # The base model, for kl: the checkpoint's dense matrices. t2's adapted models run
    # exactly these without an adapter (an SVF model too, not U diag(σ) Vᵀ with z = 1).
    base_w = {k: v for k, v in w.items() if k != "layers"}
    base_w["layers"] = [dict(L) for L in w["layers"]]
    inputs = {}  # name → leaf tensor requiring grad

    def load(name):
        return T(np.load(os.path.join(directory, "in", name + ".npy")))

    def param(name):
        t = load(name)
        t.requires_grad_(True)
        inputs[name] = t
        return t

    if kind in ("svf", "mixture"):
        rescale = spec["rescale"] == "1"
        parametrization = spec["parametrization"]
        if parametrization not in ("z", "sigmoid") or (kind == "mixture" and parametrization != "z"):
            raise SystemExit("%s: parametrization %r: svf takes z or sigmoid, a mixture none"
                             % (directory, parametrization))
        d = read_safetensors(spec["decomposition"])
        names = sorted({k.rsplit(".", 1)[0] for k in d})
        alpha = param("alpha") if kind == "mixture" else None
        for name in names:
            l, which = parse_matrix(name)
            U, S, V = T(d[name + ".U"]), T(d[name + ".S"]), T(d[name + ".V"])
            # The decomposition belongs to this checkpoint: U diag(σ) Vᵀ gives back W.
            W = w["layers"][l][which]
            err = float(((U * S) @ V.T - W).norm() / W.norm())
            if err > 1e-4:
                raise SystemExit("%s: %s: U diag(S) V^T differs from the checkpoint's matrix by "
                                 "%.3g (relative); wrong decomposition file?" % (directory, name, err))
            if kind == "svf" and parametrization == "sigmoid":
                z = torch.sigmoid(param(name + ".theta"))
            elif kind == "svf":
                z = param(name + ".z")
            else:
                experts = load(name + ".experts")  # [K × r], frozen
                a = alpha if alpha.dim() == 1 else alpha[l]
                z = a @ experts
            w["layers"][l][which] = svf_weight(U, S, V, z, rescale)
    elif kind == "lora":
        scale = float(spec["lora_alpha"]) / float(spec["lora_rank"])
        for name in spec["matrices"].split(","):
            l, which = parse_matrix(name)
            A, B = param(name + ".A"), param(name + ".B")
            w["layers"][l][which] = w["layers"][l][which] + scale * (B @ A)
    else:
        raise SystemExit("%s: unknown kind %r" % (directory, kind))

    terms = spec.get("loss", "cross_entropy").split(",")
    unknown = [t for t in terms if t not in ("cross_entropy", "reinforce", "kl")]
    if unknown or len(set(terms)) != len(terms):
        raise SystemExit("%s: loss %r: the terms are cross_entropy, reinforce, kl, each once"
                         % (directory, spec.get("loss")))

    def batch_logits(weights):  # [R × vocab], each sequence from position 0
        return torch.cat([forward(cfg, weights, seq[:-1], layout) for seq in sequences])

    logits = batch_logits(w)
    targets = torch.tensor([t for seq in sequences for t in seq[1:]], dtype=torch.long)
    log_q = torch.log_softmax(logits, dim=-1)
    ce = -log_q[torch.arange(rows), targets]
    values = {}
    if "cross_entropy" in terms:
        values["cross_entropy"] = (mask * ce).sum() / mask.sum()
    if "reinforce" in terms:
        rewards = [float(r) for r in spec["rewards"].split(",")]
        if len(rewards) != len(sequences):
            raise SystemExit("%s: %d rewards for %d sequences"
                             % (directory, len(rewards), len(sequences)))
        row_reward = T([r for r, seq in zip(rewards, sequences) for _ in seq[1:]])
        values["reinforce"] = (row_reward * mask * ce).sum() / len(sequences)
    if "kl" in terms:
        with torch.no_grad():
            log_p = torch.log_softmax(batch_logits(base_w), dim=-1)
        if spec["kl_direction"] == "base_to_adapted":
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        elif spec["kl_direction"] == "adapted_to_base":
            kl = (log_q.exp() * (log_q - log_p)).sum(-1)
        else:
            raise SystemExit("%s: unknown kl_direction %r" % (directory, spec["kl_direction"]))
        kl_weights = (T([float(x) for x in spec["kl_weights"].split(",")]) if "kl_weights" in spec
                      else torch.ones(rows, dtype=f64))
        if len(kl_weights) != rows:
            raise SystemExit("%s: %d kl_weights for %d rows" % (directory, len(kl_weights), rows))
        values["kl"] = float(spec["kl_coefficient"]) * (kl_weights * kl).sum()

    def write(out, value, grads):
        os.makedirs(out, exist_ok=True)
        np.save(os.path.join(out, "loss.npy"), np.array([value.item()], dtype="<f8"))
        for name, g in zip(inputs, grads):
            np.save(os.path.join(out, name + ".npy"), np.ascontiguousarray(g.numpy(), dtype="<f8"))

    out = os.path.join(directory, "out")
    params = list(inputs.values())
    if len(terms) > 1:
        for term in terms:
            write(os.path.join(out, term), values[term],
                  torch.autograd.grad(values[term], params, retain_graph=True))
    loss = sum(values[t] for t in terms)
    write(out, loss, torch.autograd.grad(loss, params))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("case", "batch"):
        sys.stderr.write(__doc__)
        sys.exit(2)
    if sys.argv[1] == "case":
        run_case(sys.argv[2])
        return
    with open(sys.argv[2]) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                run_case(line)


if __name__ == "__main__":
    main()
