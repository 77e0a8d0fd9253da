"""The sub-model scheme on the 8×8 digits: four small MLPs, each trained on its own quarter of
the data, then transfer rounds in which each learns from the others' predictions until they
agree. Prints each round's disagreement and validation accuracies, and the test accuracy of
each sub-model and of their ensemble.

    python python/examples/submodels_digits.py
"""

import numpy as np
from sklearn.datasets import load_digits

import distillery

X, y = load_digits(return_X_y=True)

group = distillery.submodels(
    X, y, k=4, shards=True, arch="mlp:32", epochs=40, rounds=6, tolerance=1e-3,
    peers="stale", peer_weight="auto", train={"lr": 3e-3}, quiet=True,
)

print(f"{'round':>5} {'disagreement':>12}  validation accuracy of each sub-model → ensemble")
for r in group.rounds:
    accs = " ".join(f"{a:.3f}" for a in r["val_accuracy"])
    print(f"{r['round']:>5} {r['disagreement']:>12.5f}  {accs} → {r['ensemble_val_accuracy']:.3f}")
print(f"kept round {group.group['chosen_round']} ({group.group['chosen_reason']}); "
      f"stopped: {group.group['stop_reason']}")
print("test accuracy:")
for m in group.members:
    print(f"  {m.record['name']:<14} {m.record['accuracy']:.4f}  ({m.architecture}, {m.bytes} bytes)")
print(f"  {'ensemble':<14} {group.ensemble['accuracy']:.4f}")

# The ensemble predicts from Python too: the members' probabilities averaged.
p = group.predict(X[:5])
print("ensemble says", p.argmax(axis=1), "for labels", y[:5])

results = {
    "member_accuracy": [m.record["accuracy"] for m in group.members],
    "ensemble_accuracy": group.ensemble["accuracy"],
    "rounds": len(group.rounds),
}
