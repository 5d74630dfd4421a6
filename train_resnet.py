"""Train ResNet-18 with a small-image stem (models/resnet.py).

    python train_resnet.py --data data/fashion-mnist
    python train_resnet.py --data DIR --epochs 30 --name resnet-long
    python train_resnet.py --resume runs/resnet-long --epochs 40
    python train_resnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# Its epochs are what the README's time budget holds (README, Results).
DEFAULTS = dict(epochs=9, img_size=28, lr=2e-3, translate=2)

if __name__ == "__main__":
    main("resnet", **DEFAULTS)
