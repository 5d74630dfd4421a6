"""Train ReXNet-1.0 from timm, from scratch (models/rexnet.py).

    python train_rexnet.py --data data/fashion-mnist
    python train_rexnet.py --data DIR --epochs 30 --name rexnet-long
    python train_rexnet.py --resume runs/rexnet-long --epochs 40
    python train_rexnet.py --help     # every option, with this script's defaults
"""
from trainer import main

DEFAULTS = dict(epochs=15, batch_size=128, img_size=32, lr=2e-3, weight_decay=0.05, rotate=0.0)

if __name__ == "__main__":
    main("rexnet", **DEFAULTS)
