"""Train ReXNet-1.0 from timm, from scratch (models/rexnet.py).

    python train_rexnet.py --data data/fashion-mnist
    python train_rexnet.py --data DIR --epochs 30 --name rexnet-long
    python train_rexnet.py --resume runs/rexnet-long --epochs 40
    python train_rexnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# 28 px: with the stride-1 stem it still ends at 2x2, for less work than 32 px. Its epochs are what the README's
# time budget holds (README, Results; which compute format is fastest for it: BENCHMARKS.md).
DEFAULTS = dict(epochs=10, img_size=28, lr=2e-3, translate=2)

if __name__ == "__main__":
    main("rexnet", **DEFAULTS)
