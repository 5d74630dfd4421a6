"""Train CoAtNet-0 from timm, built for the image size (models/coatnet.py).

    python train_coatnet.py --data data/fashion-mnist
    python train_coatnet.py --data DIR --epochs 30 --name coatnet-long
    python train_coatnet.py --resume runs/coatnet-long --epochs 40
    python train_coatnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# CoAtNet needs a multiple of 32, so 32 px (its attention stages then see 2x2 and 1x1 maps). Its epochs are what
# the README's time budget holds (README, Results).
DEFAULTS = dict(epochs=5, img_size=32, lr=2e-3, translate=2)

if __name__ == "__main__":
    main("coatnet", **DEFAULTS)
