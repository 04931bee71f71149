"""Training: the Fashion-MNIST data, base training, flexify (distillation) and the eval classifier (torch).

data        the four IDX files, checked, as [N, 1, 32, 32] in [-1, 1]
losses      DiT's loss: ε-MSE + the variational bound on the learned variance
train       base training (EMA, resumable, time-boxed)
flexify     distil weak patch sizes toward the base model
classifier  the small CNN behind eval's class-consistency
sampling    a plain PyTorch sampling loop (planner + guidance) for training-time samples
"""

# Submodules are imported where used (their names are also their main functions': train, flexify).
