"""Train CoAtNet-0 from timm, built for the image size (models/coatnet.py).

    python train_coatnet.py --data data/fashion-mnist
    python train_coatnet.py --data DIR --epochs 30 --name coatnet-long
    python train_coatnet.py --resume runs/coatnet-long --epochs 40
    python train_coatnet.py --help     # every option, with this script's defaults
"""
from trainer import main

# CoAtNet needs a multiple of 32; attention layers like a longer warm-up.
DEFAULTS = dict(epochs=15, batch_size=128, img_size=32, lr=1e-3, weight_decay=0.05, rotate=0.0, warmup_epochs=2.0)

if __name__ == "__main__":
    main("coatnet", **DEFAULTS)
