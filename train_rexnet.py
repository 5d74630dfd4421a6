"""Train ReXNet-1.0 from timm, from scratch (models/rexnet.py).

    python train_rexnet.py --data data/fashion-mnist
    python train_rexnet.py --data DIR --epochs 30 --name rexnet-long
    python train_rexnet.py --resume runs/rexnet-long --epochs 40
    python train_rexnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# 28 px: with the stride-1 stem it still ends at 2x2, for less work than 32 px. 10 epochs fit an hour on 2 CPU
# cores (figures: README, Results; which compute format is fastest for it: BENCHMARKS.md).
DEFAULTS = dict(epochs=10, batch_size=128, img_size=28, lr=2e-3, weight_decay=0.05, rotate=0.0, translate=2,
                label_smoothing=0.1)

if __name__ == "__main__":
    main("rexnet", **DEFAULTS)
