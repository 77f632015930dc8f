#!/usr/bin/env python3
"""PyTorch reference for t2's optimizers and gradient clipping (tests/test_train_optimizers.cpp).

Nothing here uses t2's code; only the inputs t2 writes are read. A case is a directory
holding case.txt (tab-separated "key value" lines) and float32 .npy inputs in in/:
  kind       adam | sgd | clip
  lr, beta1, beta2, eps   (adam)  float32 values in decimal (9 significant digits)
  lr, momentum            (sgd)
  max_norm, chunks        (clip)  chunks: comma-separated sizes that add up to n
  adam, sgd: in/params.npy [n] (the initial parameters), in/grads.npy [steps x n] (the
             gradient of each step); clip: in/grads.npy [n]
The script writes, in out/:
  adam, sgd  params.npy [steps x n] float32, the parameters after each step, from
             torch.optim.Adam (no weight decay, no amsgrad) or torch.optim.SGD (no dampening,
             no Nesterov) with foreach=False (the per-tensor loop) on one float32 tensor whose
             .grad is set to the step's gradient; state.npy float32, the optimizer's state
             after the last step: exp_avg then exp_avg_sq [2n] (adam), momentum_buffer [n]
             (sgd with momentum; none without)
  clip       norm.npy [1] float64 (torch's float32 total norm) and clipped.npy [n] float32, from
             torch.nn.utils.clip_grad_norm_ over the chunks as separate parameters (t2's flat
             span is their concatenation)

Commands:
  optimizer_reference.py case DIR           one case
  optimizer_reference.py batch MANIFEST     every case directory listed (one a line, '#' comments)
"""
import os
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # the C++ test turns this into a failure with this message
    sys.stderr.write(
        "optimizer_reference.py: cannot import %s with %s (%s); install Debian's python3-torch "
        "and python3-numpy\n" % (e.name or "a module", sys.executable, e))
    sys.exit(3)

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case_spec import read_spec  # noqa: E402


def f32(text):
    """The float32 value t2 holds, exactly, as a Python float: torch then rounds nothing more
    than t2 does when it casts a hyperparameter to the tensors' float32."""
    return float(np.float32(text))


def load(directory, name):
    a = np.load(os.path.join(directory, "in", name + ".npy"))
    if a.dtype != np.float32:
        raise SystemExit("%s: in/%s.npy is %s, expected float32" % (directory, name, a.dtype))
    return torch.from_numpy(a)


def save(out, name, tensor, dtype="<f4"):
    np.save(os.path.join(out, name + ".npy"), np.ascontiguousarray(tensor.numpy(), dtype=dtype))


def run_case(directory):
    spec = read_spec(directory)
    kind = spec["kind"]
    out = os.path.join(directory, "out")
    os.makedirs(out, exist_ok=True)
    grads = load(directory, "grads")

    if kind == "clip":
        sizes = [int(s) for s in spec["chunks"].split(",")]
        if sum(sizes) != grads.numel():
            raise SystemExit("%s: chunks %s for %d gradients" % (directory, sizes, grads.numel()))
        params = [torch.zeros(s, dtype=torch.float32, requires_grad=True) for s in sizes]
        for p, g in zip(params, torch.split(grads, sizes)):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, f32(spec["max_norm"]))
        save(out, "norm", torch.tensor([norm.item()], dtype=torch.float64), "<f8")
        save(out, "clipped", torch.cat([p.grad for p in params]))
        return

    param = torch.nn.Parameter(load(directory, "params").clone())
    if grads.dim() != 2 or grads.shape[1] != param.numel():
        raise SystemExit("%s: gradients %s for %d parameters" % (directory, list(grads.shape), param.numel()))
    if kind == "adam":
        opt = torch.optim.Adam([param], lr=f32(spec["lr"]), betas=(f32(spec["beta1"]), f32(spec["beta2"])),
                               eps=f32(spec["eps"]), foreach=False)
    elif kind == "sgd":
        opt = torch.optim.SGD([param], lr=f32(spec["lr"]), momentum=f32(spec["momentum"]), foreach=False)
    else:
        raise SystemExit("%s: unknown kind %r" % (directory, kind))
    trajectory = []
    for g in grads:
        param.grad = g.clone()
        opt.step()
        trajectory.append(param.detach().clone())
    save(out, "params", torch.stack(trajectory))
    state = opt.state[param]
    if kind == "adam":
        save(out, "state", torch.cat([state["exp_avg"], state["exp_avg_sq"]]))
    elif "momentum_buffer" in state and state["momentum_buffer"] is not None:
        save(out, "state", state["momentum_buffer"])


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
