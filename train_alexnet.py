"""Train AlexNet, adapted to small images (models/alexnet.py).

    python train_alexnet.py --data data/fashion-mnist
    python train_alexnet.py --data DIR --epochs 30 --name alexnet-long
    python train_alexnet.py --resume runs/alexnet-long --epochs 40
    python train_alexnet.py --help     # every option, with this script's defaults
"""
from trainer import main

DEFAULTS = dict(epochs=15, batch_size=128, img_size=32, lr=1e-3, weight_decay=0.05, rotate=0.0)

if __name__ == "__main__":
    main("alexnet", **DEFAULTS)
