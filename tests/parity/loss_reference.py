#!/usr/bin/env python3
"""PyTorch autograd reference for t2's loss objects (tests/test_nn_loss.cpp).

A packed batch: the rows of B sequences stacked, R rows of V logits; sequence b owns rows
[offsets[b], offsets[b+1]) and row r predicts targets[r] (-100 on rows that no loss counts:
PyTorch's ignore_index). Everything is computed in float64 from the float32 inputs with
torch's own functions, nothing from t2:

  ce_r   = F.cross_entropy(logits, targets, reduction='none', ignore_index=-100)
  next_token_cross_entropy   sum_r w_r ce_r / sum_r w_r                   (w = weights)
  reinforce                  (1/B) sum_b reward_b sum_{r in b} mask_r ce_r
  kl_base_to_adapted         coefficient sum_r w_r KL(p_base || q)         (w = kl_weights)
  kl_adapted_to_base         coefficient sum_r w_r KL(q || p_base)
      with log p = F.log_softmax(base_logits), log q = F.log_softmax(logits) and
      KL(a || b) = F.kl_div(log b, log a, log_target=True, reduction='none').sum(-1)
  reinforce+kl_base_to_adapted, reinforce+kl_adapted_to_base    the sums

DIR holds case.txt (tab-separated "key value" lines: offsets, targets, rewards, mask,
weights, kl_weights as comma-separated numbers, kl_coefficient), logits.npy and base_logits.npy
([R x V] float32). For each loss above the script writes DIR/out/<loss>.loss.npy [1] and
DIR/out/<loss>.dlogits.npy [R x V], float64.

Command:
  loss_reference.py DIR
"""
import os
import sys

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # the C++ test turns this into a failure with this message
    sys.stderr.write(
        "loss_reference.py: cannot import %s with %s (%s); install Debian's python3-torch "
        "and python3-numpy\n" % (e.name or "a module", sys.executable, e))
    sys.exit(3)

torch.set_num_threads(1)
f64 = torch.float64


from case_spec import read_spec  # noqa: E402  (the script's directory is on sys.path)


def numbers(text, kind=float):
    return [kind(v) for v in text.split(",") if v.strip()]


def main():
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    directory = sys.argv[1]
    spec = read_spec(directory)
    offsets = numbers(spec["offsets"], int)
    targets = torch.tensor(numbers(spec["targets"], int), dtype=torch.long)
    rewards = torch.tensor(numbers(spec["rewards"]), dtype=f64)
    mask = torch.tensor(numbers(spec["mask"]), dtype=f64)
    weights = torch.tensor(numbers(spec["weights"]), dtype=f64)
    kl_weights = torch.tensor(numbers(spec["kl_weights"]), dtype=f64)
    coefficient = float(spec["kl_coefficient"])
    logits_in = torch.from_numpy(np.load(os.path.join(directory, "logits.npy")).astype(np.float64))
    base = torch.from_numpy(np.load(os.path.join(directory, "base_logits.npy")).astype(np.float64))
    R, V = logits_in.shape
    B = len(offsets) - 1
    if offsets[0] != 0 or offsets[-1] != R or len(targets) != R or len(rewards) != B:
        raise SystemExit("loss_reference.py: inconsistent case (offsets %s, R %d, %d targets, "
                         "%d rewards)" % (offsets, R, len(targets), len(rewards)))
    # The reward of each row's sequence.
    row_reward = torch.zeros(R, dtype=f64)
    for b in range(B):
        row_reward[offsets[b]:offsets[b + 1]] = rewards[b]

    def cross_entropy(x):
        return F.cross_entropy(x, targets, reduction="none", ignore_index=-100)

    def kl(x, base_to_adapted):
        log_p, log_q = F.log_softmax(base, dim=-1), F.log_softmax(x, dim=-1)
        if base_to_adapted:  # KL(p || q): kl_div(input = log q, target = log p)
            rows = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
        else:  # KL(q || p): kl_div(input = log p, target = log q)
            rows = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
        return coefficient * (kl_weights * rows).sum()

    def reinforce(x):
        return (row_reward * mask * cross_entropy(x)).sum() / B

    losses = {
        "next_token_cross_entropy": lambda x: (weights * cross_entropy(x)).sum() / weights.sum(),
        "reinforce": reinforce,
        "kl_base_to_adapted": lambda x: kl(x, True),
        "kl_adapted_to_base": lambda x: kl(x, False),
        "reinforce+kl_base_to_adapted": lambda x: reinforce(x) + kl(x, True),
        "reinforce+kl_adapted_to_base": lambda x: reinforce(x) + kl(x, False),
    }
    out = os.path.join(directory, "out")
    os.makedirs(out, exist_ok=True)
    for name, loss_of in losses.items():
        x = logits_in.clone().requires_grad_(True)
        loss = loss_of(x)
        loss.backward()
        np.save(os.path.join(out, name + ".loss.npy"), np.array([loss.item()], dtype="<f8"))
        np.save(os.path.join(out, name + ".dlogits.npy"), np.ascontiguousarray(x.grad.numpy(), dtype="<f8"))


if __name__ == "__main__":
    main()
