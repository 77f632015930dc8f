#!/usr/bin/env python3
"""An independent PyTorch Llama, for parity tests of t2 (tests/test_parity_torch.cpp).

Nothing here uses t2: the model is written with torch's own ops (F.linear, torch.softmax,
F.silu) in float64, so the difference from t2's float32 logits measures t2's error. The
checkpoint writers follow the published formats:

  llama2c-v0   Karpathy's llama2.c legacy format (export.py legacy_export): 7 int32, f32
               weights, the RoPE tables, a negative vocab_size for an untied classifier
  llama2c-v1   export.py version1_export: 256-byte header, f32 weights
  llama2c-v2   export.py version2_export: 256-byte header, norms f32, matrices Q8_0 (int8
               values then f32 scales per tensor; scale = max|w|/127 per group of 64, halved
               while dim is not a multiple); the reference uses the dequantized weights
  gguf         GGUF v3, llama architecture, F32 tensors, dims fastest-varying first; q/k
               in the interleaved-pairs RoPE layout (llama.cpp's convention)
  gguf-f16, gguf-bf16
               the same with F16 / BF16 matrices (norms stay F32, as llama.cpp writes them)
  gguf-q8_0    matrices in ggml's Q8_0 (blocks of 32 along a row: f16 scale d = max|x|/127,
               32 int8 q = roundf(x/d)); a matrix whose rows are not a multiple of 32 is
               stored as F16 instead
  hf           a Hugging Face directory: config.json + model.safetensors with
               LlamaForCausalLM names; q/k rows in the rotate-halves RoPE layout
  hf-bf16, hf-f16
               the same with every tensor BF16 / F16
  hf-sharded   F32 in two shards named by model.safetensors.index.json

Commands:
  llama_reference.py write --format F --shape S --out PATH --logits OUT.npy --tokens 1,5,7
  llama_reference.py logits --llama2c FILE --tokens 1,5,7 --out OUT.npy
  llama_reference.py batch --dir DIR [--stories FILE.bin]
      writes every (format, shape) case, its reference logits and DIR/manifest.txt, one case
      a line: name, format, path, logits, tokens (comma-separated), separated by tabs

Reference logits are .npy float64 [T x vocab], every position.
"""
import argparse
import json
import math
import os
import struct
import sys
import zlib

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the C++ test turns this into a failure with this message
    sys.stderr.write(
        "llama_reference.py: cannot import %s with %s (%s); install Debian's python3-torch "
        "and python3-numpy\n" % (e.name or "a module", sys.executable, e))
    sys.exit(3)

torch.set_num_threads(1)

# --- model -------------------------------------------------------------------------------

DEFAULT_EPS = 1e-5
DEFAULT_THETA = 10000.0

# Shapes of the random-weight checkpoints. llama2.c formats cannot store norm_eps or
# rope_theta, so shapes with other values are written only as GGUF and Hugging Face.
SHAPES = {
    # multi-head attention, tied classifier
    "mha": dict(dim=48, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=64,
                seq_len=32, shared_classifier=True),
    # grouped-query attention (4 query heads per KV head), untied classifier
    "gqa": dict(dim=64, hidden_dim=172, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=96,
                seq_len=40, shared_classifier=False),
    # multi-query attention (one KV head), tied
    "mqa": dict(dim=32, hidden_dim=80, n_layers=3, n_heads=4, n_kv_heads=1, vocab_size=50,
                seq_len=24, shared_classifier=True),
    # odd sizes: 3 heads of 12, hidden 97, vocab 67, untied; nothing a multiple of 8 or 16
    "odd": dict(dim=36, hidden_dim=97, n_layers=3, n_heads=3, n_kv_heads=3, vocab_size=67,
                seq_len=37, shared_classifier=False, embed_std=0.003),
    # GQA with Llama-3-like hyperparameters (GGUF and Hugging Face only)
    "theta": dict(dim=40, hidden_dim=68, n_layers=2, n_heads=10, n_kv_heads=5, vocab_size=71,
                  seq_len=30, shared_classifier=True, norm_eps=1e-6, rope_theta=500000.0,
                  embed_std=0.003),
}
# Embeddings are N(0, embed_std²) (default 1). With embed_std = 0.003, mean(x²) ≈ 1e-5 at the
# first norm, so a reader that gets norm_eps wrong fails the tolerance (with embed_std = 1 the
# eps would hardly matter).

FORMATS = ["llama2c-v0", "llama2c-v1", "llama2c-v2", "gguf", "gguf-f16", "gguf-bf16", "gguf-q8_0",
           "hf", "hf-bf16", "hf-f16", "hf-sharded"]

MATRICES = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def config_of(shape):
    cfg = dict(SHAPES[shape])
    cfg.setdefault("norm_eps", DEFAULT_EPS)
    cfg.setdefault("rope_theta", DEFAULT_THETA)
    return cfg


def head_dim(cfg):
    return cfg["dim"] // cfg["n_heads"]


def kv_dim(cfg):
    return head_dim(cfg) * cfg["n_kv_heads"]


def random_weights(cfg, seed):
    """f32 weights in llama2.c's (interleaved RoPE) layout; matrices [out x in]."""
    rng = np.random.default_rng(seed)
    D, H, V, KV = cfg["dim"], cfg["hidden_dim"], cfg["vocab_size"], kv_dim(cfg)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    embed = rng.standard_normal((V, D)) * cfg.get("embed_std", 1.0)
    w = {"tok_embeddings": embed.astype(np.float32), "layers": []}
    for _ in range(cfg["n_layers"]):
        w["layers"].append({
            "attention_norm": norm(D), "wq": mat(D, D), "wk": mat(KV, D), "wv": mat(KV, D),
            "wo": mat(D, D), "ffn_norm": norm(D), "w1": mat(H, D), "w2": mat(D, H),
            "w3": mat(H, D)})
    w["norm"] = norm(D)
    w["output"] = w["tok_embeddings"] if cfg["shared_classifier"] else mat(V, D)
    return w


def forward(cfg, w, tokens, layout):
    """Logits [T x vocab] (float64) of every position; layout: 'interleaved' or 'halves'."""
    f64 = torch.float64

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64))

    D, nh, nkv = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    hd, eps, T = head_dim(cfg), float(cfg["norm_eps"]), len(tokens)

    def rmsnorm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * t(g)

    # RoPE: pair i of a head rotates by pos * theta^(-2i/head_dim).
    i = torch.arange(hd // 2, dtype=f64)
    inv_freq = torch.pow(torch.tensor(float(cfg["rope_theta"]), dtype=f64), -2.0 * i / hd)
    angle = torch.arange(T, dtype=f64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]

    def rope(v):  # v [T, heads, hd]
        if layout == "interleaved":
            a, b = v[..., 0::2], v[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        a, b = v[..., : hd // 2], v[..., hd // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

    causal = torch.full((T, T), float("-inf"), dtype=f64).triu(1)
    x = t(w["tok_embeddings"])[torch.tensor(tokens, dtype=torch.long)]  # [T, D]
    for L in w["layers"]:
        h = rmsnorm(x, L["attention_norm"])
        q = rope(F.linear(h, t(L["wq"])).view(T, nh, hd))
        k = rope(F.linear(h, t(L["wk"])).view(T, nkv, hd))
        v = F.linear(h, t(L["wv"])).view(T, nkv, hd)
        k = k.repeat_interleave(nh // nkv, dim=1)  # query head j reads KV head j // group
        v = v.repeat_interleave(nh // nkv, dim=1)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, T, hd]
        scores = q @ k.transpose(1, 2) / math.sqrt(hd) + causal
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(T, D)
        x = x + F.linear(attended, t(L["wo"]))
        h = rmsnorm(x, L["ffn_norm"])
        x = x + F.linear(F.silu(F.linear(h, t(L["w1"]))) * F.linear(h, t(L["w3"])), t(L["w2"]))
    return F.linear(rmsnorm(x, w["norm"]), t(w["output"])).numpy()


def to_halves(m, heads):
    """Rows of a q/k matrix from the interleaved-pairs to the rotate-halves RoPE layout
    (what Hugging Face's convert_llama_weights_to_hf.py permute() does)."""
    rows, cols = m.shape
    return np.ascontiguousarray(
        m.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols))


def from_halves(m, heads):
    """The inverse of to_halves."""
    rows, cols = m.shape
    return np.ascontiguousarray(
        m.reshape(heads, 2, rows // heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols))


# --- llama2.c ----------------------------------------------------------------------------

def q80_group_size(cfg):
    group = 64  # export.py: halved while dim is not a multiple
    while cfg["dim"] % group != 0:
        group //= 2
    return group


def quantize_q80(w, group):
    """export.py's quantize_q80, in float32: (int8 values, f32 scales, dequantized f32)."""
    x = torch.from_numpy(np.array(w, dtype=np.float32)).reshape(-1, group)
    scale = x.abs().max(dim=1).values / 127.0
    q = torch.round(x / scale[:, None]).to(torch.int8)
    deq = (q.float() * scale[:, None]).reshape(w.shape)
    return q.numpy(), scale.numpy(), deq.numpy()


def rope_tables(cfg):
    """llama2.c's freqs_cos / freqs_sin [seq_len x head_dim/2] as model.py computes them."""
    hd = head_dim(cfg)
    freqs = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    angles = torch.outer(torch.arange(cfg["seq_len"]).float(), freqs)
    return torch.cos(angles).numpy(), torch.sin(angles).numpy()


def _f32(out, a):
    out.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def _header7(cfg, vocab):
    return struct.pack("<7i", cfg["dim"], cfg["hidden_dim"], cfg["n_layers"], cfg["n_heads"],
                       cfg["n_kv_heads"], vocab, cfg["seq_len"])


def write_llama2c(path, cfg, w, version):
    """Writes version 0, 1 or 2; returns the weights the file holds (dequantized for 2)."""
    assert cfg["norm_eps"] == DEFAULT_EPS and cfg["rope_theta"] == DEFAULT_THETA
    layers, shared = w["layers"], cfg["shared_classifier"]
    held = {"tok_embeddings": w["tok_embeddings"], "norm": w["norm"],
            "layers": [dict(L) for L in layers], "output": w["output"]}
    with open(path, "wb") as out:
        if version == 0:
            vocab = cfg["vocab_size"] if shared else -cfg["vocab_size"]
            out.write(_header7(cfg, vocab))
            _f32(out, w["tok_embeddings"])
            for name in ["attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"]:
                for L in layers:
                    _f32(out, L[name])
            _f32(out, w["norm"])
            cos, sin = rope_tables(cfg)
            _f32(out, cos)
            _f32(out, sin)
            if not shared:
                _f32(out, w["output"])
            return held
        header = struct.pack("<Ii", 0x616B3432, version) + _header7(cfg, cfg["vocab_size"])
        header += struct.pack("<B", int(shared))
        group = q80_group_size(cfg)
        if version == 2:
            header += struct.pack("<i", group)
        out.write(header + b"\0" * (256 - len(header)))
        for name in ["attention_norm", "ffn_norm"]:
            for L in layers:
                _f32(out, L[name])
        _f32(out, w["norm"])
        mats = [("tok_embeddings", None, w["tok_embeddings"])]
        for name in MATRICES:
            mats += [(name, l, L[name]) for l, L in enumerate(layers)]
        if not shared:
            mats.append(("output", None, w["output"]))
        for name, l, m in mats:
            if version == 1:
                _f32(out, m)
                continue
            q, s, deq = quantize_q80(m, group)
            out.write(q.astype(np.int8).tobytes())
            _f32(out, s)
            if l is None:
                held[name] = deq
            else:
                held["layers"][l][name] = deq
        if shared:
            held["output"] = held["tok_embeddings"]
    return held


def read_llama2c(path):
    """(config, weights) of a llama2.c checkpoint, versions 0, 1 and 2 (dequantized)."""
    data = open(path, "rb").read()
    off = 0

    def take(count, dtype):
        nonlocal off
        a = np.frombuffer(data, dtype=dtype, count=count, offset=off)
        off += a.nbytes
        return a

    magic = struct.unpack_from("<I", data, 0)[0]
    version, group = 0, 0
    if magic == 0x616B3432:
        version = struct.unpack_from("<i", data, 4)[0]
        dims = struct.unpack_from("<7i", data, 8)
        shared = data[36] != 0
        if version == 2:
            group = struct.unpack_from("<i", data, 37)[0]
        if version not in (1, 2):
            raise SystemExit("%s: llama2.c version %d is not supported" % (path, version))
        off = 256
    else:
        dims = struct.unpack_from("<7i", data, 0)
        shared = dims[5] > 0
        off = 28
    cfg = dict(zip(["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                    "seq_len"], dims))
    cfg["vocab_size"] = abs(cfg["vocab_size"])
    cfg.update(shared_classifier=shared, norm_eps=DEFAULT_EPS, rope_theta=DEFAULT_THETA)
    D, H, V, KV, nl = cfg["dim"], cfg["hidden_dim"], cfg["vocab_size"], kv_dim(cfg), cfg["n_layers"]
    shapes = {"wq": (D, D), "wk": (KV, D), "wv": (KV, D), "wo": (D, D), "w1": (H, D),
              "w2": (D, H), "w3": (H, D)}

    def mat(rows, cols):
        n = rows * cols
        if version != 2:
            return take(n, "<f4").reshape(rows, cols)
        q = take(n, np.int8).astype(np.float32)
        s = take(n // group, "<f4")
        return (q.reshape(-1, group) * s[:, None]).reshape(rows, cols)

    layers = [dict() for _ in range(nl)]
    w = {"layers": layers}
    if version == 0:
        w["tok_embeddings"] = mat(V, D)
        for name in ["attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"]:
            for L in layers:
                L[name] = take(D, "<f4") if name.endswith("norm") else mat(*shapes[name])
        w["norm"] = take(D, "<f4")
        take(cfg["seq_len"] * head_dim(cfg), "<f4")  # RoPE tables
    else:
        for name in ["attention_norm", "ffn_norm"]:
            for L in layers:
                L[name] = take(D, "<f4")
        w["norm"] = take(D, "<f4")
        w["tok_embeddings"] = mat(V, D)
        for name in MATRICES:
            for L in layers:
                L[name] = mat(*shapes[name])
    w["output"] = w["tok_embeddings"] if shared else mat(V, D)
    if off != len(data):
        raise SystemExit("%s: %d bytes left after the last tensor" % (path, len(data) - off))
    return cfg, w


# --- element types -----------------------------------------------------------------------

def encode(a, dtype):
    """(little-endian bytes, the f32 values they hold) of a in 'f32', 'f16' or 'bf16'."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return a.astype("<f4").tobytes(), a
    if dtype == "f16":
        h = a.astype(np.float16)  # round to nearest even
        return h.astype("<f2").tobytes(), h.astype(np.float32)
    assert dtype == "bf16"
    b = torch.from_numpy(a).to(torch.bfloat16)  # round to nearest even
    return b.view(torch.int16).numpy().astype("<i2").tobytes(), b.float().numpy()


def quantize_ggml_q8_0(a):
    """ggml's quantize_row_q8_0_ref over rows of a [rows x cols], cols a multiple of 32:
    (block bytes, dequantized f32 values). Each block: f16 d = max|x|/127, then 32 int8
    roundf(x * (1/d)); the value of q is f32(d16) * q."""
    x = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 32)
    d = np.abs(x).max(axis=1) / np.float32(127)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0))
    v = (x * inv[:, None]).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf
    d16 = d.astype(np.float16)
    blocks = np.empty(x.shape[0], dtype=[("d", "<f2"), ("q", "i1", 32)])
    blocks["d"], blocks["q"] = d16, q
    held = (d16.astype(np.float32)[:, None] * q.astype(np.float32)).astype(np.float32)
    return blocks.tobytes(), held.reshape(a.shape)


# --- GGUF --------------------------------------------------------------------------------

GGUF_UINT32, GGUF_INT32, GGUF_FLOAT32, GGUF_STRING, GGUF_ARRAY = 4, 5, 6, 8, 9
GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}


def _gguf_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_kv(key, vtype, value):
    out = _gguf_str(key) + struct.pack("<I", vtype)
    if vtype == GGUF_STRING:
        return out + _gguf_str(value)
    if vtype == GGUF_ARRAY:
        etype, items = value
        out += struct.pack("<IQ", etype, len(items))
        if etype == GGUF_STRING:
            return out + b"".join(_gguf_str(s) for s in items)
        return out + b"".join(struct.pack({GGUF_FLOAT32: "<f", GGUF_INT32: "<i"}[etype], x)
                              for x in items)
    return out + struct.pack({GGUF_UINT32: "<I", GGUF_FLOAT32: "<f"}[vtype], value)


def write_gguf(path, cfg, w, dtype="f32", alignment=32):
    """GGUF v3, llama architecture (interleaved RoPE layout, as llama.cpp). Matrices in
    dtype ('f32', 'f16', 'bf16' or 'q8_0'), norms in F32. Returns the weights it holds."""
    V = cfg["vocab_size"]
    # A small SentencePiece-style vocabulary: <unk>, <s>, </s>, then plain pieces.
    tokens = ["<unk>", "<s>", "</s>"] + ["\u2581t%d" % i for i in range(3, V)]
    kv = [
        ("general.architecture", GGUF_STRING, "llama"),
        ("general.name", GGUF_STRING, "t2 parity test"),
        ("llama.context_length", GGUF_UINT32, cfg["seq_len"]),
        ("llama.embedding_length", GGUF_UINT32, cfg["dim"]),
        ("llama.feed_forward_length", GGUF_UINT32, cfg["hidden_dim"]),
        ("llama.block_count", GGUF_UINT32, cfg["n_layers"]),
        ("llama.attention.head_count", GGUF_UINT32, cfg["n_heads"]),
        ("llama.attention.head_count_kv", GGUF_UINT32, cfg["n_kv_heads"]),
        ("llama.rope.dimension_count", GGUF_UINT32, head_dim(cfg)),
        ("llama.attention.layer_norm_rms_epsilon", GGUF_FLOAT32, cfg["norm_eps"]),
        ("llama.rope.freq_base", GGUF_FLOAT32, cfg["rope_theta"]),
        ("tokenizer.ggml.model", GGUF_STRING, "llama"),
        ("tokenizer.ggml.tokens", GGUF_ARRAY, (GGUF_STRING, tokens)),
        ("tokenizer.ggml.scores", GGUF_ARRAY,
         (GGUF_FLOAT32, [0.0] * 3 + [-float(i) for i in range(3, V)])),
        ("tokenizer.ggml.token_type", GGUF_ARRAY, (GGUF_INT32, [2, 3, 3] + [1] * (V - 3))),
        ("tokenizer.ggml.unknown_token_id", GGUF_UINT32, 0),
        ("tokenizer.ggml.bos_token_id", GGUF_UINT32, 1),
        ("tokenizer.ggml.eos_token_id", GGUF_UINT32, 2),
    ]
    if alignment != 32:
        kv.append(("general.alignment", GGUF_UINT32, alignment))
    names = {"attention_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v",
             "wo": "attn_output", "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down",
             "w3": "ffn_up"}
    held = {"layers": [dict() for _ in w["layers"]]}
    tensors = [("token_embd.weight", w["tok_embeddings"], held, "tok_embeddings")]
    for l, L in enumerate(w["layers"]):
        tensors += [("blk.%d.%s.weight" % (l, names[k]), L[k], held["layers"][l], k) for k in names]
    tensors.append(("output_norm.weight", w["norm"], held, "norm"))
    if not cfg["shared_classifier"]:
        tensors.append(("output.weight", w["output"], held, "output"))

    def pad(n):
        return (alignment - n % alignment) % alignment

    infos, blobs, offset = b"", [], 0
    for name, a, into, key in tensors:
        t = "f32" if a.ndim == 1 else dtype
        if t == "q8_0" and a.shape[-1] % 32 != 0:
            t = "f16"
        blob, into[key] = quantize_ggml_q8_0(a) if t == "q8_0" else encode(a, t)
        dims = list(reversed(a.shape))  # fastest-varying first
        infos += _gguf_str(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", GGML_TYPES[t], offset)
        blob += b"\0" * pad(len(blob))
        blobs.append(blob)
        offset += len(blob)
    if cfg["shared_classifier"]:
        held["output"] = held["tok_embeddings"]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    head += b"".join(_gguf_kv(*x) for x in kv) + infos
    with open(path, "wb") as out:
        out.write(head + b"\0" * pad(len(head)))
        for blob in blobs:
            out.write(blob)
    return held


# --- Hugging Face (config.json + model.safetensors) --------------------------------------

def _write_safetensors(path, tensors):
    """tensors: [(name, dtype name, shape, bytes)], laid out in order without gaps."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for *_, blob in tensors:
            out.write(blob)
    return offset


def write_hf(directory, cfg, w, dtype="f32", shards=1):
    """A LlamaForCausalLM directory, every tensor in dtype ('f32', 'f16' or 'bf16'), q/k rows
    permuted to the rotate-halves layout. Returns the weights as stored."""
    os.makedirs(directory, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": cfg["dim"], "intermediate_size": cfg["hidden_dim"],
        "num_hidden_layers": cfg["n_layers"], "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_kv_heads"], "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": cfg["seq_len"], "rms_norm_eps": cfg["norm_eps"],
        "rope_theta": cfg["rope_theta"], "rope_scaling": None,
        "tie_word_embeddings": cfg["shared_classifier"], "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype],
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    names = {"attention_norm": "input_layernorm", "wq": "self_attn.q_proj",
             "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "w1": "mlp.gate_proj", "w2": "mlp.down_proj",
             "w3": "mlp.up_proj"}
    held = {"layers": [dict() for _ in w["layers"]]}
    tensors = [("model.embed_tokens.weight", w["tok_embeddings"], held, "tok_embeddings")]
    for l, L in enumerate(w["layers"]):
        L = dict(L, wq=to_halves(L["wq"], cfg["n_heads"]), wk=to_halves(L["wk"], cfg["n_kv_heads"]))
        tensors += [("model.layers.%d.%s.weight" % (l, names[k]), L[k], held["layers"][l], k)
                    for k in names]
    tensors.append(("model.norm.weight", w["norm"], held, "norm"))
    if not cfg["shared_classifier"]:
        tensors.append(("lm_head.weight", w["output"], held, "output"))
    encoded = []
    for name, a, into, key in tensors:
        blob, into[key] = encode(a, dtype)
        encoded.append((name, dtype.upper(), a.shape, blob))
    if cfg["shared_classifier"]:
        held["output"] = held["tok_embeddings"]
    if shards == 1:
        _write_safetensors(os.path.join(directory, "model.safetensors"), encoded)
        return held
    # Contiguous slices, one file each, and the index naming every tensor's file.
    weight_map, total, per = {}, 0, -(-len(encoded) // shards)
    for i in range(shards):
        part = encoded[i * per:(i + 1) * per]
        file = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        total += _write_safetensors(os.path.join(directory, file), part)
        weight_map.update({name: file for name, *_ in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return held


# --- cases -------------------------------------------------------------------------------

def supports(fmt, shape):
    """Whether a shape can be written in a format, and would test what the format names."""
    cfg = config_of(shape)
    if fmt.startswith("llama2c"):
        return cfg["norm_eps"] == DEFAULT_EPS and cfg["rope_theta"] == DEFAULT_THETA
    if fmt == "gguf-q8_0":  # some matrix must have rows of whole Q8_0 blocks
        return cfg["dim"] % 32 == 0 or cfg["hidden_dim"] % 32 == 0
    return True


def case_tokens(shape, count=None):
    """A fixed token sequence for a shape: BOS, then pseudo-random ids (repeats included)."""
    cfg = config_of(shape)
    n = count or min(cfg["seq_len"], 19)
    rng = np.random.default_rng(zlib.crc32(("tokens " + shape).encode()))
    return [1] + [int(x) for x in rng.integers(0, cfg["vocab_size"], n - 1)]


def write_model(fmt, cfg, w, out, tokens, alignment=32):
    """Writes the model in format fmt and returns the reference logits [T x vocab] (float64)
    of what the file holds."""
    check_tokens(cfg, tokens)
    if fmt.startswith("llama2c-v"):
        held = write_llama2c(out, cfg, w, int(fmt[-1]))
        # The file must read back as what the reference uses.
        rcfg, rw = read_llama2c(out)
        assert all(rcfg[k] == cfg[k] for k in rcfg), (rcfg, cfg)
        assert_same_weights(held, rw)
        return forward(cfg, held, tokens, "interleaved")
    if fmt.startswith("gguf"):
        dtype = fmt[5:] or "f32"
        held = write_gguf(out, cfg, w, dtype, alignment)
        return forward(cfg, held, tokens, "interleaved")
    if fmt.startswith("hf"):
        dtype = fmt[3:] if fmt in ("hf-f16", "hf-bf16") else "f32"
        held = write_hf(out, cfg, w, dtype, shards=2 if fmt == "hf-sharded" else 1)
        logits = forward(cfg, held, tokens, "halves")
        # Self-check of the two RoPE layouts: with q/k rows permuted back, the interleaved
        # reference computes the same function.
        back = dict(held, layers=[dict(L, wq=from_halves(L["wq"], cfg["n_heads"]),
                                       wk=from_halves(L["wk"], cfg["n_kv_heads"]))
                                  for L in held["layers"]])
        same = forward(cfg, back, tokens, "interleaved")
        err = np.abs(logits - same).max() / np.abs(same).max()
        assert err < 1e-12, "rotate-halves and interleaved references disagree: %g" % err
        return logits
    raise SystemExit("llama_reference.py: unknown format %r (known: %s)" % (fmt, ", ".join(FORMATS)))


def write_case(fmt, shape, out, tokens):
    """Writes a random-weight checkpoint of a shape; returns its reference logits."""
    cfg = config_of(shape)
    if not supports(fmt, shape):
        raise SystemExit("llama_reference.py: shape %s (norm_eps %g, rope_theta %g) cannot be "
                         "stored in %s" % (shape, cfg["norm_eps"], cfg["rope_theta"], fmt))
    w = random_weights(cfg, zlib.crc32(("weights " + shape).encode()))
    # One GGUF file per shape with a non-default general.alignment.
    alignment = 64 if shape == "odd" else 32
    return write_model(fmt, cfg, w, out, tokens, alignment)


def assert_same_weights(a, b):
    def flat(w):
        yield w["tok_embeddings"]
        yield w["norm"]
        yield w["output"]
        for L in w["layers"]:
            for k in sorted(L):
                yield L[k]
    for x, y in zip(flat(a), flat(b)):
        assert np.array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def check_tokens(cfg, tokens):
    if not tokens or len(tokens) > cfg["seq_len"]:
        raise SystemExit("llama_reference.py: %d tokens for a context of %d"
                         % (len(tokens), cfg["seq_len"]))
    bad = [t for t in tokens if not 0 <= t < cfg["vocab_size"]]
    if bad:
        raise SystemExit("llama_reference.py: token %d is outside the vocabulary of %d"
                         % (bad[0], cfg["vocab_size"]))


def parse_tokens(text):
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit("llama_reference.py: --tokens wants comma-separated integers, got %r" % text)


def save(path, logits):
    np.save(path, np.ascontiguousarray(logits, dtype="<f8"), allow_pickle=False)


# The stories260K sequence: run.c's greedy continuation of "The dog ran"
# (tests/data/stories260K_greedy_runc.txt), 48 tokens.
STORIES_TOKENS = [1, 291, 400, 428, 352, 303, 267, 265, 282, 295, 433, 335, 345, 357, 426, 342,
                  397, 355, 267, 337, 335, 265, 315, 267, 422, 419, 426, 342, 397, 355, 267, 337,
                  335, 265, 315, 267, 422, 419, 269, 352, 379, 261, 420, 277, 264, 265, 282, 295]


def batch(directory, stories):
    os.makedirs(directory, exist_ok=True)
    lines = []

    def case_path(name, fmt):
        return os.path.join(directory, name + {"gguf": ".gguf", "hf": ""}.get(fmt.split("-")[0], ".bin"))

    for shape in SHAPES:
        tokens = case_tokens(shape)
        for fmt in FORMATS:
            if not supports(fmt, shape):
                continue
            name = "%s-%s" % (fmt, shape)
            path, logits_path = case_path(name, fmt), os.path.join(directory, name + ".logits.npy")
            save(logits_path, write_case(fmt, shape, path, tokens))
            lines.append((name, fmt, path, logits_path, tokens))
    if stories:
        # The real model: the published file itself (legacy llama2.c), llama.cpp's conversion
        # (stories260K.gguf beside it; byte-identical weights) and re-exports written here.
        cfg, w = read_llama2c(stories)
        tokens = STORIES_TOKENS
        check_tokens(cfg, tokens)
        logits_path = os.path.join(directory, "stories260K.logits.npy")
        save(logits_path, forward(cfg, w, tokens, "interleaved"))
        lines.append(("stories260K", "llama2c-v0", stories, logits_path, tokens))
        gguf = os.path.splitext(stories)[0] + ".gguf"
        if os.path.exists(gguf):
            lines.append(("stories260K-gguf", "gguf", gguf, logits_path, tokens))
        for fmt in ["llama2c-v2", "hf", "gguf-q8_0"]:
            name = "stories260K-" + fmt
            path, logits = case_path(name, fmt), os.path.join(directory, name + ".logits.npy")
            save(logits, write_model(fmt, cfg, w, path, tokens))
            lines.append((name, fmt, path, logits, tokens))
    with open(os.path.join(directory, "manifest.txt"), "w") as f:
        f.write("# name\tformat\tpath\tlogits\ttokens (written by llama_reference.py batch)\n")
        for name, fmt, path, logits_path, tokens in lines:
            f.write("\t".join([name, fmt, path, logits_path, ",".join(map(str, tokens))]) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write one random-weight checkpoint and its reference logits")
    w.add_argument("--format", required=True, choices=FORMATS)
    w.add_argument("--shape", required=True, choices=sorted(SHAPES))
    w.add_argument("--out", required=True, help="checkpoint file (a directory for hf)")
    w.add_argument("--logits", required=True, help="reference logits .npy [T x vocab], float64")
    w.add_argument("--tokens", help="comma-separated token ids (default: a fixed sequence)")
    lg = sub.add_parser("logits", help="reference logits of an existing llama2.c checkpoint")
    lg.add_argument("--llama2c", required=True)
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--out", required=True)
    b = sub.add_parser("batch", help="write every case and DIR/manifest.txt")
    b.add_argument("--dir", required=True)
    b.add_argument("--stories", help="also the reference logits of this llama2.c checkpoint")
    args = p.parse_args()
    if args.command == "write":
        tokens = parse_tokens(args.tokens) if args.tokens else case_tokens(args.shape)
        save(args.logits, write_case(args.format, args.shape, args.out, tokens))
    elif args.command == "logits":
        cfg, w = read_llama2c(args.llama2c)
        tokens = parse_tokens(args.tokens)
        check_tokens(cfg, tokens)
        save(args.out, forward(cfg, w, tokens, "interleaved"))
    else:
        batch(args.dir, args.stories)


if __name__ == "__main__":
    main()
