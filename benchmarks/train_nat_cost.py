"""The cost of the ``train_nat_acc`` forward: one FAT τ = 1 training step with and without it
(small CNN, MNIST-size batch 128, 1 thread), 30 interleaved A/B pairs in one process; medians and
their ratio.

    python -m benchmarks.train_nat_cost   (writes benchmarks/results/train_nat_cost_cpu.json)
"""
import json
import statistics
import time
from pathlib import Path

import torch

import fastadv

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
def make(flag):
    torch.manual_seed(0)
    m = fastadv.models.create("small_cnn", num_classes=10, in_channels=1)
    return fastadv.Trainer(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), "fat", tau=1,
                           eps=0.3, alpha=0.075, steps=10, train_nat_acc=flag)
ta, tb = make(True), make(False)
for t in (ta, tb):
    for _ in range(3): t.train_step(x, y)
on, off = [], []
for i in range(30):
    for flag, t, acc in ((True, ta, on), (False, tb, off)) if i % 2 == 0 else ((False, tb, off), (True, ta, on)):
        s = time.perf_counter(); t.train_step(x, y); acc.append(time.perf_counter() - s)
r = {"what": "FAT tau=1 step, small CNN, 128x1x28x28, 1 thread", "median_on_s": statistics.median(on),
     "median_off_s": statistics.median(off), "pairs": 30,
     "pairwise_median_ratio_off_over_on": statistics.median(b / a for a, b in zip(on, off))}
r["ratio_off_over_on"] = r["median_off_s"] / r["median_on_s"]
r["torch"], r["date"] = torch.__version__, time.strftime("%Y-%m-%d")
out = Path(__file__).resolve().parent / "results" / "train_nat_cost_cpu.json"
out.write_text(json.dumps(r, indent=1) + "\n")
print(json.dumps(r, indent=1))
