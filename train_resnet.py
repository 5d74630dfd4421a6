"""Train ResNet-18 with a small-image stem (models/resnet.py).

    python train_resnet.py --data data/fashion-mnist
    python train_resnet.py --data DIR --epochs 30 --name resnet-long
    python train_resnet.py --resume runs/resnet-long --epochs 40
    python train_resnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# 9 epochs fit an hour on 2 CPU cores (figures: README, Results).
DEFAULTS = dict(epochs=9, batch_size=128, img_size=28, lr=2e-3, weight_decay=0.05, rotate=0.0, translate=2,
                label_smoothing=0.1)

if __name__ == "__main__":
    main("resnet", **DEFAULTS)
