"""Train ReXNet-1.0 from timm, from scratch (models/rexnet.py).

    python train_rexnet.py --data data/fashion-mnist
    python train_rexnet.py --data DIR --epochs 30 --name rexnet-long
    python train_rexnet.py --resume runs/rexnet-long --epochs 40
    python train_rexnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# Below 64 px it has a stride-1 stem, so 28 px still ends at 2x2. Its epochs are what the README's time budget
# holds (README, Results; which compute format is fastest for it: BENCHMARKS.md); sizes up to its pretrained 224 px.
DEFAULTS = dict(epochs=10, max_img_size=224, lr=2e-3, translate=2)

if __name__ == "__main__":
    main("rexnet", **DEFAULTS)
