"""Train AlexNet, adapted to small images (models/alexnet.py).

    python train_alexnet.py --data data/fashion-mnist
    python train_alexnet.py --data DIR --epochs 30 --name alexnet-long
    python train_alexnet.py --resume runs/alexnet-long --epochs 40
    python train_alexnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# Shifts of up to 2 pixels (and the built-in label smoothing) keep this ~6M-parameter network from memorising
# the data; its epochs are what the README's time budget holds (README, Results).
DEFAULTS = dict(epochs=12, max_img_size=128, lr=1e-3, translate=2)

if __name__ == "__main__":
    main("alexnet", **DEFAULTS)
